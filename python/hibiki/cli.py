"""The ``hibiki`` command line.

``hibiki serve``  runs the SFU and its signaling server (``/signaling``, Sora protocol).
``hibiki token``  prints a Sora-style access token (JWT) for a server started with ``--api-secret``.
``hibiki demo``   runs the demo (``hibiki.demo``); its arguments are passed through.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _redirect_rule(text: str) -> tuple[str, str]:
    from hibiki.server.placement import parse_redirect_rule

    try:
        return parse_redirect_rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _claim(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value  # a bare word is a string: --claim client_id=alice


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hibiki``."""
    parser = argparse.ArgumentParser(prog="hibiki", description="Hibiki: a WebRTC SFU and Python SDK.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the SFU with its signaling server",
        description="Run the SFU: WebSocket signaling at /signaling (Sora protocol), /health, "
        "the HTTP API at /api (Sora-style x-sora-target actions, also at POST /), and the UDP media sockets.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (HTTP and UDP; default %(default)s)")
    serve.add_argument("--port", type=_port, default=5000, help="HTTP/WebSocket port (default %(default)s)")
    serve.add_argument("--rtc-port", type=_port, default=0, help="UDP port for media; 0 = any free port (default)")
    serve.add_argument("--public-ip", default=None, help="address to announce in ICE candidates (behind NAT)")
    serve.add_argument("--shards", type=int, default=1, help="SFU shard threads (default %(default)s)")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="default %(default)s")
    serve.add_argument(
        "--connect-timeout", type=_positive_float, default=10.0, help="seconds to wait for `connect` (default 10)"
    )
    serve.add_argument(
        "--answer-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds to wait for `answer` after the offer, and again for ICE/DTLS after it (default 30)",
    )
    serve.add_argument("--ping-interval", type=_positive_float, default=5.0, help="seconds between pings (default 5)")
    serve.add_argument(
        "--ping-timeout", type=_positive_float, default=15.0, help="close after this long without pong (default 15)"
    )
    serve.add_argument(
        "--max-message-bytes", type=int, default=64 * 1024, help="largest signaling message (default 65536)"
    )
    auth = serve.add_argument_group(
        "API secret and authentication (off by default: everything open, for local development)",
        "With a secret, `connect` needs metadata.access_token: a JWT (HS256) signed with it (a user token "
        "with user_id and optionally call_cids/role, see hibiki.api.Client.create_token, or a Sora-style "
        "token with channel_id, see `hibiki token`); the /v1 API needs a server token signed with it "
        "(and X-Api-Key when --api-key is set); the Sora-style /api needs 'Authorization: Bearer SECRET'. "
        "With an auth webhook, every connect is POSTed to it and must be answered "
        '{"allowed": true, ...} within the timeout.',
    )
    auth.add_argument(
        "--api-secret",
        "--auth-secret",
        dest="auth_secret",
        default=os.environ.get("HIBIKI_API_SECRET") or os.environ.get("HIBIKI_AUTH_SECRET") or None,
        metavar="SECRET",
        help="signs and checks tokens and webhooks (default: $HIBIKI_API_SECRET, or $HIBIKI_AUTH_SECRET; "
        "prefer the variable or the config file: arguments are visible to other users in ps)",
    )
    auth.add_argument(
        "--api-key",
        default=os.environ.get("HIBIKI_API_KEY") or None,
        metavar="KEY",
        help="the API key /v1 requests must carry in X-Api-Key (default: $HIBIKI_API_KEY)",
    )
    auth.add_argument(
        "--auth-webhook",
        default=os.environ.get("HIBIKI_AUTH_WEBHOOK") or None,
        metavar="URL",
        help="auth webhook URL (default: $HIBIKI_AUTH_WEBHOOK)",
    )
    auth.add_argument(
        "--auth-webhook-timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="no answer in time rejects the connection (close 4503; default 5)",
    )
    state = serve.add_argument_group("calls and webhooks")
    state.add_argument(
        "--database",
        default=os.environ.get("HIBIKI_DATABASE") or "hibiki.sqlite3",
        metavar="PATH",
        help="SQLite file for calls and members, created if missing; ':memory:' keeps nothing "
        "(default: $HIBIKI_DATABASE, else %(default)s in the working directory)",
    )
    state.add_argument(
        "--webhook-url",
        action="append",
        default=[u for u in os.environ.get("HIBIKI_WEBHOOK_URLS", "").replace(",", " ").split() if u],
        metavar="URL",
        help="POST call, participant and track events here, signed with the secret; repeatable "
        "(default: $HIBIKI_WEBHOOK_URLS, space or comma separated)",
    )
    state.add_argument(
        "--webhook-timeout", type=_positive_float, default=5.0, metavar="SECONDS", help="per delivery (default 5)"
    )
    state.add_argument(
        "--webhook-max-attempts",
        type=_positive_int,
        default=6,
        metavar="N",
        help="deliveries per event before it is dropped (default 6)",
    )
    state.add_argument(
        "--webhook-backoff",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="delay before the first retry, doubled for each next one, at most 30 s (default 0.5)",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of serve options (names as the long options, with _ for -: api_secret, "
        "webhook_urls = [...], ...); command-line options and environment variables win over it",
    )
    serve.add_argument(
        "--notify-update-interval",
        type=_non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="period of each connection's connection.updated notify; 0 = off (default 60)",
    )
    serve.add_argument(
        "--redirect",
        type=_redirect_rule,
        action="append",
        default=[],
        metavar="PATTERN=URL",
        help="send clients of channels matching PATTERN (fnmatch, e.g. 'room-*') to the signaling URL "
        "(a Sora `redirect`); repeatable, first match wins",
    )

    token = sub.add_parser(
        "token",
        help="print an access token for a server started with --api-secret",
        description="Print a JWT (HS256) to put in connect's metadata.access_token: a user token "
        "(--user-id, optionally --call-cid) or a Sora-style one (--channel-id).",
    )
    token.add_argument(
        "--secret",
        default=os.environ.get("HIBIKI_API_SECRET") or os.environ.get("HIBIKI_AUTH_SECRET") or None,
        help="the server's --api-secret (default: $HIBIKI_API_SECRET, or $HIBIKI_AUTH_SECRET)",
    )
    who = token.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", help="a user token for this user (its connections' client_id)")
    who.add_argument("--channel-id", help="a Sora-style token for this channel")
    token.add_argument(
        "--call-cid",
        action="append",
        default=None,
        metavar="TYPE:ID",
        help="with --user-id: a call the token may join; repeatable (default: any call)",
    )
    token.add_argument("--role", choices=("sendrecv", "sendonly", "recvonly"), help="restrict to this role")
    token.add_argument("--client-id", help="client_id the connection gets (overrides what the client sends)")
    token.add_argument("--ttl", type=_positive_float, default=3600.0, help="seconds until it expires (default 3600)")
    token.add_argument(
        "--claim",
        type=_claim,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='an extra claim, e.g. connection_lifetime=600 or metadata=\'{"plan":"pro"}\'; repeatable',
    )

    sub.add_parser(
        "demo",
        help="run the demo (see `hibiki demo --help`)",
        add_help=False,  # --help belongs to the demo's own parser
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hibiki._log import log_config
    from hibiki.server import ServerSettings, create_app
    from hibiki.server.placement import StaticPlacement

    try:
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            rtc_port=args.rtc_port,
            public_ip=args.public_ip,
            shards=args.shards,
            max_message_bytes=args.max_message_bytes,
            ping_interval=args.ping_interval,
            ping_timeout=args.ping_timeout,
            connect_timeout=args.connect_timeout,
            answer_timeout=args.answer_timeout,
            log_level=args.log_level,
            auth_secret=args.auth_secret,
            api_key=args.api_key,
            database=args.database,
            webhook_urls=tuple(args.webhook_url),
            webhook_timeout=args.webhook_timeout,
            webhook_max_attempts=args.webhook_max_attempts,
            webhook_backoff=args.webhook_backoff,
            auth_webhook_url=args.auth_webhook,
            auth_webhook_timeout=args.auth_webhook_timeout,
            notify_update_interval=args.notify_update_interval,
            placement=StaticPlacement(args.redirect) if args.redirect else None,
        )
    except ValueError as exc:
        print(f"hibiki serve: {exc}", file=sys.stderr)
        return 2
    problem = _database_problem(settings.database)
    if problem is not None:
        print(f"hibiki serve: --database {settings.database}: {problem}", file=sys.stderr)
        return 2

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=log_config(settings.log_level),
        log_level=settings.log_level,
        ws_max_size=settings.ws_max_size,
        # The C++ client does not offer permessage-deflate; signaling messages are small.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the captured SIGINT after its graceful shutdown.
        pass
    return 0 if server.started else 3


def _database_problem(path: str) -> str | None:
    """Why the call store cannot be opened, found before the server starts (one line, no traceback)."""
    import sqlite3
    from pathlib import Path

    if path == ":memory:":
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        return "is a directory"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(target).close()
    except (OSError, sqlite3.Error) as exc:
        return str(exc)
    return None


def _token(args: argparse.Namespace) -> int:
    from hibiki.api.tokens import create_token
    from hibiki.server.auth import create_access_token

    if not args.secret:
        print("hibiki token: give --secret or set HIBIKI_API_SECRET", file=sys.stderr)
        return 2
    claims = dict(args.claim)
    for name in ("channel_id", "user_id", "call_cids", "role", "client_id", "exp", "iat"):
        if name in claims:
            print(f"hibiki token: set {name} with its own option, not --claim", file=sys.stderr)
            return 2
    if args.user_id is not None:
        if args.client_id is not None:
            print("hibiki token: a user token's client_id is its --user-id", file=sys.stderr)
            return 2
        try:
            print(create_token(args.secret, args.user_id, expiration=args.ttl, call_cids=args.call_cid,
                               role=args.role, **claims))
        except ValueError as exc:
            print(f"hibiki token: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.call_cid:
        print("hibiki token: --call-cid goes with --user-id", file=sys.stderr)
        return 2
    print(
        create_access_token(
            args.secret, args.channel_id, role=args.role, ttl=args.ttl, client_id=args.client_id, **claims
        )
    )
    return 0


_CONFIG_ALIASES = {"api_secret": "auth_secret", "webhook_urls": "webhook_url", "auth_webhook_url": "auth_webhook"}
_CONFIG_ENV = {
    "auth_secret": ("HIBIKI_API_SECRET", "HIBIKI_AUTH_SECRET"),
    "api_key": ("HIBIKI_API_KEY",),
    "auth_webhook": ("HIBIKI_AUTH_WEBHOOK",),
    "database": ("HIBIKI_DATABASE",),
    "webhook_url": ("HIBIKI_WEBHOOK_URLS",),
}


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]
    raise AssertionError("no serve subcommand")


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Load ``serve --config FILE`` (TOML) as the defaults of ``serve``'s options.

    Precedence: command line, then environment variables, then the file,
    then built-in defaults. Unknown keys and wrong types are errors.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv[1:])
    if not known.config:
        return
    import tomllib

    try:
        with open(known.config, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read --config {known.config}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {known.config} is not valid TOML: {exc}") from None
    values = doc.get("serve", doc) if isinstance(doc.get("serve"), dict) else doc
    serve = _serve_parser(parser)
    actions = {a.dest: a for a in serve._actions}
    defaults: dict[str, object] = {}
    for key, value in values.items():
        dest = _CONFIG_ALIASES.get(key, key.replace("-", "_"))
        action = actions.get(dest)
        if action is None or dest in ("help", "config"):
            raise ValueError(f"--config {known.config}: unknown option {key!r}")
        if any(os.environ.get(name) for name in _CONFIG_ENV.get(dest, ())):
            continue  # the environment wins over the file
        if isinstance(action, argparse._AppendAction):
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) for item in items):
                raise ValueError(f"--config {known.config}: {key} must be a string or a list of strings")
            if dest == "redirect":
                items = [_redirect_rule(item) for item in items]
            defaults[dest] = items
            continue
        convert = action.type
        try:
            converted = convert(str(value)) if callable(convert) and not isinstance(value, bool) else value
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"--config {known.config}: {key}: {exc}") from None
        if action.choices is not None and converted not in action.choices:
            raise ValueError(f"--config {known.config}: {key} must be one of {', '.join(map(str, action.choices))}")
        defaults[dest] = converted
    serve.set_defaults(**defaults)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hibiki`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        # Forward everything, options included, to the demo's own parser.
        from hibiki.demo import main as demo_main

        return int(demo_main(args_list[1:]) or 0)
    parser = build_parser()
    if args_list[:1] == ["serve"]:
        try:
            _apply_config_file(parser, args_list)
        except ValueError as exc:
            print(f"hibiki serve: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(args_list)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
