"""``hibiki serve --config FILE``: TOML options, below the environment and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON_SRC
from hibiki.cli import _apply_config_file, build_parser


def _parse(argv: list[str]) -> object:
    parser = build_parser()
    _apply_config_file(parser, argv)
    return parser.parse_args(argv)


def test_config_file_values_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HIBIKI_API_SECRET", "HIBIKI_AUTH_SECRET", "HIBIKI_API_KEY", "HIBIKI_DATABASE", "HIBIKI_WEBHOOK_URLS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "hibiki.toml"
    config.write_text(
        '[serve]\napi_secret = "from-file-0123456789abcdef0123456789"\napi_key = "file-key"\n'
        'database = "/tmp/file.sqlite3"\nwebhook_urls = ["http://a/hooks", "http://b/hooks"]\n'
        "webhook_max_attempts = 3\nport = 5111\nlog_level = \"debug\"\n"
    )
    args = _parse(["serve", "--config", str(config)])
    assert (args.auth_secret, args.api_key, args.database) == (  # type: ignore[attr-defined]
        "from-file-0123456789abcdef0123456789", "file-key", "/tmp/file.sqlite3")
    assert args.webhook_url == ["http://a/hooks", "http://b/hooks"]  # type: ignore[attr-defined]
    assert (args.webhook_max_attempts, args.port, args.log_level) == (3, 5111, "debug")  # type: ignore[attr-defined]
    # The command line wins over the file, and so does the environment.
    monkeypatch.setenv("HIBIKI_API_KEY", "env-key")
    args = _parse(["serve", "--config", str(config), "--port", "5222"])
    assert (args.port, args.api_key) == (5222, "env-key")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nonsense = 1\n", "unknown option 'nonsense'"),
        ("port = 70000\n", "port"),
        ('log_level = "loud"\n', "log_level must be one of"),
        ("webhook_urls = [1]\n", "must be a string or a list of strings"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_config_file_errors_exit_with_a_message(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "hibiki", "serve", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(PYTHON_SRC)},
        timeout=30,
    )
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "hibiki", "serve", "--config", str(tmp_path / "none.toml")],
        check=False, capture_output=True, text=True, env={"PYTHONPATH": str(PYTHON_SRC)}, timeout=30,
    )
    assert missing.returncode == 2 and "cannot read --config" in missing.stderr
