"""Sora signaling over WebSocket: opening the socket, the ``connect`` message, framing.

This module knows the wire format (sora-signaling.md §3.1, §3.5, §5.1) and
nothing about media. :class:`Connection` drives the exchange itself.

Opening follows what sora-sdk does with several URLs (§3.5): every URL is
tried at once, the first WebSocket whose handshake completes is kept, and any
other that opens later is closed politely (normal close, nothing sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.version import version as websockets_version

__all__ = [
    "SDK_NAME",
    "SDK_VERSION",
    "SignalingChannel",
    "SignalingClosed",
    "SignalingOpenError",
    "build_connect_message",
    "dumps",
    "environment_string",
    "parse_message",
]

logger = logging.getLogger("hibiki.client")

SDK_VERSION = "0.1.0"
SDK_NAME = f"Hibiki Python SDK {SDK_VERSION}"
# SDPs with many forwarded tracks are large; websockets' 1 MiB default is too tight.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def environment_string() -> str:
    """``[arch] OS release`` plus the Python version, like sora-sdk's ``environment`` field."""
    return (
        f"[{platform.machine()}] {platform.system()} {platform.release()} "
        f"(Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro})"
    )


def _media_field(
    enabled: bool | None, codec_type: str | None, bit_rate: int | None, extra: dict[str, Any] | None
) -> bool | dict[str, Any]:
    """``false`` when disabled, an object when any option is set, else ``true`` (§5.1)."""
    if enabled is False:
        return False
    options: dict[str, Any] = {}
    if codec_type:
        options["codec_type"] = codec_type.upper()
    if bit_rate:
        options["bit_rate"] = int(bit_rate)
    if extra:
        options.update(extra)
    return options or True


def build_connect_message(
    *,
    role: str,
    channel_id: str,
    client_id: str | None = None,
    bundle_id: str | None = None,
    metadata: Any = None,
    signaling_notify_metadata: Any = None,
    audio: bool | None = None,
    video: bool | None = None,
    audio_codec_type: str | None = None,
    video_codec_type: str | None = None,
    audio_bit_rate: int | None = None,
    video_bit_rate: int | None = None,
    audio_extra: dict[str, Any] | None = None,
    video_extra: dict[str, Any] | None = None,
    data_channel_signaling: bool | None = None,
    ignore_disconnect_websocket: bool | None = None,
    data_channels: list[dict[str, Any]] | None = None,
    redirect: bool = False,
    simulcast: bool | None = None,
    simulcast_rid: str | None = None,
    simulcast_request_rid: str | None = None,
    spotlight: bool | None = None,
    spotlight_number: int | None = None,
    spotlight_focus_rid: str | None = None,
    spotlight_unfocus_rid: str | None = None,
) -> dict[str, Any]:
    """Build the ``connect`` message. Unset fields are left out, as sora-sdk does.

    ``data_channel_signaling`` and ``ignore_disconnect_websocket`` are sent
    whenever they are given (``False`` included), like libsora's optional
    fields; ``data_channels`` entries should come from
    :func:`hibiki.client.datachannel.normalize_data_channels`.

    >>> build_connect_message(role="sendonly", channel_id="room")["video"]
    True
    """
    msg: dict[str, Any] = {
        "type": "connect",
        "role": role,
        "channel_id": channel_id,
        "sora_client": SDK_NAME,
        "libwebrtc": "str0m",
        "environment": environment_string(),
        "multistream": True,
    }
    if redirect:
        msg["redirect"] = True
    if client_id:
        msg["client_id"] = client_id
    if bundle_id:
        msg["bundle_id"] = bundle_id
    if metadata is not None:
        msg["metadata"] = metadata
    if signaling_notify_metadata is not None:
        msg["signaling_notify_metadata"] = signaling_notify_metadata
    msg["audio"] = _media_field(audio, audio_codec_type, audio_bit_rate, audio_extra)
    msg["video"] = _media_field(video, video_codec_type, video_bit_rate, video_extra)
    # Booleans go out whenever given (False included), like libsora's optional fields.
    for name, flag in (("data_channel_signaling", data_channel_signaling),
                       ("ignore_disconnect_websocket", ignore_disconnect_websocket),
                       ("simulcast", simulcast), ("spotlight", spotlight)):
        if flag is not None:
            msg[name] = bool(flag)
    if data_channels:
        msg["data_channels"] = [dict(entry) for entry in data_channels]
    for name, value in (("simulcast_rid", simulcast_rid), ("simulcast_request_rid", simulcast_request_rid),
                        ("spotlight_number", spotlight_number), ("spotlight_focus_rid", spotlight_focus_rid),
                        ("spotlight_unfocus_rid", spotlight_unfocus_rid)):
        if value:
            msg[name] = value
    return msg


def parse_message(text: str, where: str = "signaling") -> dict[str, Any] | None:
    """Parse one signaling message: a JSON object with a string ``type``, else None (logged).

    The official client would crash on anything else (§1); we log and go on.
    """
    try:
        msg = json.loads(text)
    except ValueError:
        logger.warning("ignoring a %s message that is not JSON: %.200s", where, text)
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        logger.warning("ignoring a %s message without a string type: %.200s", where, text)
        return None
    return msg


def dumps(message: dict[str, Any]) -> str:
    """The compact JSON text of a signaling message (what goes on the wire)."""
    return json.dumps(message, separators=(",", ":"))


class SignalingOpenError(Exception):
    """No signaling URL could be opened; ``errors`` maps each URL to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        detail = "; ".join(f"{url}: {why}" for url, why in errors.items())
        super().__init__(f"could not open a signaling WebSocket ({detail})")


@dataclass(frozen=True)
class SignalingClosed(Exception):
    """The WebSocket closed. ``code``/``reason`` come from the server's close frame.

    ``clean`` is False when the socket broke without a close frame (then
    ``code`` is 1006, as RFC 6455 reports such closes).
    """

    code: int
    reason: str
    clean: bool

    def __str__(self) -> str:
        if not self.clean:
            return "the signaling WebSocket broke without a close frame"
        return f"the server closed the signaling WebSocket: {self.code} {self.reason!r}"


def _describe_open_error(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} from the server (is the path /signaling?)"
    if isinstance(exc, InvalidURI):
        return f"invalid URL ({exc})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        if exc.errno:
            return f"{os.strerror(exc.errno)} ({exc})"
        return str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class SignalingChannel:
    """One open signaling WebSocket: JSON in, JSON out."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url

    @classmethod
    async def open(
        cls,
        urls: list[str],
        timeout: float,
        *,
        proxy: str | None = None,
        user_agent: str | None = None,
    ) -> SignalingChannel:
        """Open every URL at once and keep the first that completes its handshake.

        Raises :class:`SignalingOpenError` when all fail or ``timeout`` passes.
        """
        if not urls:
            raise SignalingOpenError({"(none)": "no signaling URL given"})

        async def open_one(url: str) -> ClientConnection:
            return await ws_connect(
                url,
                open_timeout=timeout,
                close_timeout=3,
                compression=None,  # like libsora: no permessage-deflate offer
                max_size=MAX_MESSAGE_BYTES,
                proxy=proxy,
                user_agent_header=user_agent or f"{SDK_NAME} websockets/{websockets_version}",
            )

        tasks: dict[asyncio.Task[ClientConnection], str] = {
            asyncio.ensure_future(open_one(url)): url for url in dict.fromkeys(urls)
        }
        errors: dict[str, str] = {}
        winner: SignalingChannel | None = None
        pending: set[asyncio.Task[ClientConnection]] = set(tasks)
        try:
            async with asyncio.timeout(timeout):
                while pending and winner is None:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        url = tasks[task]
                        exc = task.exception()
                        if exc is not None:
                            errors[url] = _describe_open_error(exc)
                            logger.debug("signaling URL %s failed: %r", url, exc)
                        elif winner is None:
                            winner = cls(task.result(), url)
                        else:
                            _close_politely(task.result())
        except TimeoutError:
            for task in pending:
                errors.setdefault(tasks[task], f"timed out after {timeout:g} s")
        finally:
            for task in pending:
                if winner is not None:
                    # Let late handshakes finish and close them properly, so
                    # the servers see a normal close rather than a reset.
                    task.add_done_callback(_close_when_open)
                else:
                    task.cancel()
        if winner is None:
            raise SignalingOpenError(errors)
        return winner

    async def send(self, message: dict[str, Any]) -> str:
        """Send ``message`` as one JSON text frame and return the text sent."""
        text = dumps(message)
        await self.ws.send(text)
        return text

    async def recv(self) -> tuple[str, dict[str, Any]]:
        """Return the next message as (raw text, parsed object).

        Frames that are not JSON objects with a string ``type`` are logged and
        skipped (the official client would crash on them; we stay up).
        Raises :class:`SignalingClosed` when the socket closes.
        """
        while True:
            try:
                frame = await self.ws.recv()
            except ConnectionClosed as exc:
                raise self._closed_info(exc) from None
            text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
            msg = parse_message(text)
            if msg is not None:
                return text, msg

    @staticmethod
    def _closed_info(exc: ConnectionClosed) -> SignalingClosed:
        if exc.rcvd is not None:
            return SignalingClosed(exc.rcvd.code, exc.rcvd.reason, True)
        return SignalingClosed(1006, "", False)

    def closed_info(self) -> SignalingClosed | None:
        """How the socket closed, or None while it is open."""
        exc = self.ws.protocol.close_exc if self.ws.protocol.state.name == "CLOSED" else None
        if exc is None:
            return None
        return self._closed_info(exc)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 3.0) -> None:
        """Close the socket politely, or drop it if the server does not answer in ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.abort()
        except Exception:  # pragma: no cover - closing is best effort
            logger.debug("error while closing the signaling WebSocket", exc_info=True)


# Strong references to fire-and-forget tasks (the loop only keeps weak ones).
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run ``coro`` in the background on the current loop, keeping it referenced."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _close_politely(ws: ClientConnection) -> None:
    spawn(ws.close())


def _close_when_open(task: asyncio.Task[ClientConnection]) -> None:
    if not task.cancelled() and task.exception() is None:
        _close_politely(task.result())
