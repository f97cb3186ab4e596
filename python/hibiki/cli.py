"""The ``hibiki`` command line.

``hibiki serve``  runs the SFU and its signaling server (``/signaling``, Sora protocol).
``hibiki token``  prints an access token (JWT) for a server started with ``--auth-secret``.
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
        "authentication (off by default)",
        "With a secret, `connect` needs metadata.access_token: a JWT (HS256) signed with it, with claims "
        "channel_id, exp and optionally role (see `hibiki token`), and the HTTP API needs "
        "'Authorization: Bearer SECRET'. With a webhook, every connect is POSTed to it and must be "
        'answered {"allowed": true, ...} within the timeout.',
    )
    auth.add_argument(
        "--auth-secret",
        default=os.environ.get("HIBIKI_AUTH_SECRET") or None,
        metavar="SECRET",
        help="token and API secret (default: $HIBIKI_AUTH_SECRET; prefer the variable: "
        "arguments are visible to other users in ps)",
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
        help="print an access token for a server started with --auth-secret",
        description="Print a JWT (HS256) to put in connect's metadata.access_token.",
    )
    token.add_argument(
        "--secret",
        default=os.environ.get("HIBIKI_AUTH_SECRET") or None,
        help="the server's --auth-secret (default: $HIBIKI_AUTH_SECRET)",
    )
    token.add_argument("--channel-id", required=True, help="the channel the token admits to")
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
            auth_webhook_url=args.auth_webhook,
            auth_webhook_timeout=args.auth_webhook_timeout,
            notify_update_interval=args.notify_update_interval,
            placement=StaticPlacement(args.redirect) if args.redirect else None,
        )
    except ValueError as exc:
        print(f"hibiki serve: {exc}", file=sys.stderr)
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


def _token(args: argparse.Namespace) -> int:
    from hibiki.server.auth import create_access_token

    if not args.secret:
        print("hibiki token: give --secret or set HIBIKI_AUTH_SECRET", file=sys.stderr)
        return 2
    claims = dict(args.claim)
    for name in ("channel_id", "role", "client_id", "exp", "iat"):
        if name in claims:
            print(f"hibiki token: set {name} with its own option, not --claim", file=sys.stderr)
            return 2
    print(
        create_access_token(
            args.secret, args.channel_id, role=args.role, ttl=args.ttl, client_id=args.client_id, **claims
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hibiki`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        # Forward everything, options included, to the demo's own parser.
        from hibiki.demo import main as demo_main

        return int(demo_main(args_list[1:]) or 0)
    args = build_parser().parse_args(args_list)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
