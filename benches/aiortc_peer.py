"""A minimal Sora-signaling client on aiortc, so aiortc can join ``hibiki serve``.

aiortc only does the WebRTC part; this module speaks the Sora WebSocket
protocol around it (shared/docs/sora-signaling.md §3.1), the way the Hibiki
and sora-sdk clients do:

- ``connect`` (role, channel_id, audio/video with codec_type and bit_rate);
- the server's ``offer``: ``setRemoteDescription``, then ``addTrack`` for the
  local tracks (they bind to the offer's upstream m-lines, as libwebrtc's do),
  ``createAnswer``/``setLocalDescription`` and ``answer``, then one
  ``candidate`` message per candidate aiortc gathered (aiortc does not
  trickle: they are in its answer SDP as well);
- ``re-offer`` -> ``re-answer`` (and the legacy ``update`` -> ``update``)
  whenever the server adds or removes forwarded tracks;
- ``ping`` -> ``pong``; ``notify`` and ``push`` are kept for the caller;
- ``disconnect`` on the way out.

It is a bench helper, not a product: no redirect, no DataChannel signaling,
no simulcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

__all__ = ["SoraAiortcPeer"]

logger = logging.getLogger("aiortc_peer")


class SoraAiortcPeer:
    """One aiortc ``RTCPeerConnection`` joined to a Sora-protocol server.

    >>> peer = SoraAiortcPeer(url, "room", "sendonly", video_track=track, video_codec_type="VP8")
    >>> await peer.connect()
    >>> ...
    >>> await peer.disconnect()

    ``on_track(track)`` is called (on the asyncio loop) for every remote
    track aiortc reports.
    """

    def __init__(
        self,
        url: str,
        channel_id: str,
        role: str,
        *,
        audio_track: MediaStreamTrack | None = None,
        video_track: MediaStreamTrack | None = None,
        audio: bool = True,
        video: bool = True,
        video_codec_type: str | None = None,
        video_bit_rate: int | None = None,
        audio_bit_rate: int | None = None,
    ) -> None:
        self.url = url
        self.channel_id = channel_id
        self.role = role
        self.audio_track = audio_track
        self.video_track = video_track
        self.audio = audio
        self.video = video
        self.video_codec_type = video_codec_type
        self.video_bit_rate = video_bit_rate
        self.audio_bit_rate = audio_bit_rate
        self.on_track: Callable[[MediaStreamTrack], None] | None = None
        self.pc: RTCPeerConnection | None = None
        self.connection_id: str | None = None
        self.notifies: list[dict[str, Any]] = []
        self.renegotiations = 0
        self.pings = 0
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._created = asyncio.Event()

    def _connect_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "connect",
            "role": self.role,
            "channel_id": self.channel_id,
            "sora_client": "aiortc bench peer",
            "multistream": True,
        }
        if not self.audio:
            msg["audio"] = False
        elif self.audio_bit_rate:
            msg["audio"] = {"codec_type": "OPUS", "bit_rate": self.audio_bit_rate}
        else:
            msg["audio"] = True
        if not self.video:
            msg["video"] = False
        else:
            v: dict[str, Any] = {}
            if self.video_codec_type:
                v["codec_type"] = self.video_codec_type
            if self.video_bit_rate:
                v["bit_rate"] = self.video_bit_rate
            msg["video"] = v or True
        return msg

    async def connect(self, timeout: float = 15.0) -> None:
        """Join: returns once ICE/DTLS is up and the server announced us (``connection.created``)."""
        await asyncio.wait_for(self._connect(), timeout)

    async def _connect(self) -> None:
        self._ws = await websockets.connect(self.url, max_size=None, compression=None)
        await self._ws.send(json.dumps(self._connect_message()))
        while True:
            msg = json.loads(await self._ws.recv())
            if msg.get("type") == "offer":
                break
            if msg.get("type") == "redirect":
                raise RuntimeError("redirect is not supported by the bench peer")
        self.connection_id = msg.get("connection_id")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        connected = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            assert self.pc is not None
            if self.pc.connectionState == "connected":
                connected.set()

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if self.on_track is not None:
                self.on_track(track)

        await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
        # Like the sora-sdk Python wrapper: add the tracks after the offer,
        # so they bind to the server's upstream (recvonly) m-lines.
        for track in (self.audio_track, self.video_track):
            if track is not None and self.role != "recvonly":
                self.pc.addTrack(track)
        sdp = await self._answer()
        await self._ws.send(json.dumps({"type": "answer", "sdp": sdp}))
        for line in sdp.splitlines():
            if line.startswith("a=candidate:"):
                await self._ws.send(json.dumps({"type": "candidate", "candidate": line[2:]}))
        self._reader = asyncio.create_task(self._read_loop())
        await connected.wait()
        await self._created.wait()

    async def _answer(self) -> str:
        assert self.pc is not None
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    async def _read_loop(self) -> None:
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "ping":
                    self.pings += 1
                    await self._ws.send(json.dumps({"type": "pong"}))
                elif kind in ("re-offer", "update"):
                    async with self._lock:
                        assert self.pc is not None
                        await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
                        sdp = await self._answer()
                    self.renegotiations += 1
                    reply = "re-answer" if kind == "re-offer" else "update"
                    await self._ws.send(json.dumps({"type": reply, "sdp": sdp}))
                elif kind == "notify":
                    self.notifies.append(msg)
                    if msg.get("event_type") == "connection.created" and msg.get("connection_id") == self.connection_id:
                        self._created.set()
                else:
                    logger.debug("ignored signaling message %s", kind)
        except websockets.ConnectionClosed:
            pass
        except Exception:  # a bench helper: make it loud
            logger.exception("aiortc peer read loop failed")

    async def disconnect(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 3)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.pc is not None:
            await self.pc.close()
