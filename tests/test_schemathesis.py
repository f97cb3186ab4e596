"""Property-based fuzzing of the ``/v1`` API from its own ``/openapi.json`` (schemathesis).

schemathesis generates valid and invalid requests for every operation of
the document (its examples, coverage, fuzzing and stateful phases; the
stateful phase follows the OpenAPI links, e.g. get-or-create -> end ->
delete) against a real server with an API secret and key, and checks each
answer: no 5xx, status codes, content types, headers and bodies as
documented, routes refuse requests without credentials, and a deleted call
is gone, and invalid data is refused (request models are strict: ``0`` is
not a boolean). The run is bounded (``--max-examples``) and seeded
(``HIBIKI_SCHEMATHESIS_SEED`` picks another seed), so it is repeatable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ServerProcess
from hibiki.api.tokens import create_server_token

SECRET = "schemathesis-secret-0123456789abcdef01"
API_KEY = "schemathesis-key"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
    "negative_data_rejection",
)
MAX_EXAMPLES = 30
RUN_TIMEOUT_S = 300


def _schemathesis() -> str:
    """The schemathesis CLI installed beside this Python (the test venv)."""
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install 'hibiki[test]')")
    return found


def _served(server: ServerProcess, method: str, path_regex: str, status: int) -> int:
    """How many ``method`` requests to a path matching ``path_regex`` the server answered with ``status``."""
    pattern = re.compile(rf'"{method} {path_regex}(\?[^ ]*)? HTTP/1\.1" {status}\b')
    return len(pattern.findall(server.log_text()))


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_schemathesis_finds_no_server_error_or_schema_violation(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory("--api-secret", SECRET, "--api-key", API_KEY)
    seed = os.environ.get("HIBIKI_SCHEMATHESIS_SEED", "1")
    cmd = [
        _schemathesis(),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        seed,
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--header",
        f"Authorization: Bearer {create_server_token(SECRET)}",
        "--header",
        f"X-Api-Key: {API_KEY}",
    ]
    # Longer stateful runs, so the links (get-or-create -> end / members /
    # delete) are followed for sure, whatever the generated data.
    (tmp_path / "schemathesis.toml").write_text("[phases.stateful]\nmax-steps = 100\n")
    # cwd: schemathesis and hypothesis leave their caches in the working directory.
    proc = subprocess.run(
        cmd,
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis failed (seed {seed}):\n{output[-12000:]}"
    assert re.search(r"Tested:\s+(\d+)", output) is not None, output[-4000:]
    tested = int(re.search(r"Tested:\s+(\d+)", output).group(1))  # type: ignore[union-attr]
    selected = int(re.search(r"Selected:\s+(\d+)/", output).group(1))  # type: ignore[union-attr]
    assert tested == selected >= 8, output[-4000:]

    # The credentials worked and the fuzzer reached the handlers, not only
    # validation and auth: calls were created, found, ended and deleted.
    call = r"/v1/calls/[^/ ?]+/[^/ ?]+"
    assert _served(server, "POST", call, 201) > 0, server.log_tail()
    assert _served(server, "POST", call, 200) > 0
    assert _served(server, "GET", call, 200) > 0
    assert _served(server, "POST", call + "/end", 200) > 0
    assert _served(server, "DELETE", call, 200) > 0
    assert _served(server, "POST", "/v1/calls", 200) > 0
    assert _served(server, "POST", "/v1/tokens", 200) > 0
    # ...and refused what it should.
    assert _served(server, "POST", "/v1/calls", 401) > 0  # ignored_auth sent requests without credentials
    assert _served(server, "POST", call, 422) > 0
