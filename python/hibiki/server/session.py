"""One WebSocket signaling session: the server side of sora-signaling.md §3.1 and §4.2.

States::

    WS_OPEN ──connect──▶ AUTHING ──ok──▶ OFFER_SENT ──answer──▶ NEGOTIATED ──"connected"──▶ CONNECTED
       │                   │  │                │                     │                        │
       │                   │  └─redirect / rejected──▶ CLOSING       │                        │
       └───────────────────┴───────────────────┴─────────────────────┴──────▶ CLOSING ◀───────┘
         (disconnect message, WebSocket closed, bad input, ping timeout, "closed" event,
          HTTP API disconnect, connection lifetime over)

AUTHING runs the token check, the auth webhook and the placement
(``hibiki.server.auth``, ``hibiki.server.placement``) in a task while the
reader keeps reading (a client may give up meanwhile); with none of them
configured the session goes straight to OFFER_SENT.

Concurrency: everything runs on the event loop. Three sources want to talk to
the client — the reader (the ``offer``), the Sfu event callback (notifies,
re-offers) and the ping timer — and the Sfu callback cannot await. So all
outgoing messages go through one queue drained by a writer task, which also
keeps them in order. Message handlers are plain synchronous methods: calls into
the Sfu are fast and non-blocking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from starlette.websockets import WebSocket

from hibiki._log import ConnectionLogger
from hibiki.api.models import TrackResponse
from hibiki.server import close_codes, messages, simulcast
from hibiki.server.auth import AuthError, AuthResult
from hibiki.server.channel import Channel, Member
from hibiki.server.datachannel import SYSTEM_LABELS, DataChannelPlan
from hibiki.server.ids import new_connection_id
from hibiki.server.placement import PLACEMENT_TIMEOUT_S, check_location
from hibiki.server.validation import (
    ConnectRequest,
    SignalingError,
    parse_message,
    validate_candidate,
    validate_connect,
    validate_sdp_message,
)

if TYPE_CHECKING:
    from hibiki._core import DataChannelSpec, Event, OpusParams
    from hibiki.server.hub import Hub

__all__ = ["SessionState", "SignalingSession"]

_logger = logging.getLogger("hibiki.server.session")

# How long to wait for the client's half of the closing handshake (or for our
# close frame to get out) before dropping the TCP connection.
_CLOSE_WAIT_S = 5.0
# How long the data channels' closing gets before the connection is torn down.
_DC_GOODBYE_S = 0.5
# The longest the Sfu keeps a closing connection while its WebSocket close frame goes out.
_CLOSE_FRAME_GRACE_S = 1.0
# Candidates trickled before the answer are kept until it arrives; bound them.
_MAX_PENDING_CANDIDATES = 64
# A client that does not read its socket makes the outbox grow; past this many
# queued messages the session is closed.
_MAX_OUTBOX = 4096


class SessionState(enum.Enum):
    """Where a signaling session is in its life."""

    WS_OPEN = "WS_OPEN"
    AUTHING = "AUTHING"
    OFFER_SENT = "OFFER_SENT"
    NEGOTIATED = "NEGOTIATED"
    CONNECTED = "CONNECTED"
    CLOSING = "CLOSING"


@dataclass(frozen=True)
class _CloseFrame:
    code: int
    reason: str


class SignalingSession:
    """The signaling of one client connection over one WebSocket.

    Create it for an accepted ``/signaling`` socket and await :meth:`run`; it
    returns when the socket is closed, after the connection has left its
    channel (exactly once, whatever the way out).
    """

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.ws = websocket
        self.hub = hub
        self.settings = hub.settings
        self.state = SessionState.WS_OPEN
        self.connection_id: str | None = None
        self.channel_id: str | None = None
        self.log = ConnectionLogger(_logger)
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[str | _CloseFrame] = asyncio.Queue()
        self._close_frame: _CloseFrame | None = None
        self._frames_received = 0
        self._request: ConnectRequest | None = None
        self._member: Member | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._published: list[TrackResponse] = []
        """Tracks this connection publishes (for ``call.track_unpublished`` webhooks when it leaves)."""
        self._sfu_has_connection = False
        # The simulcast layer this receiver asked for: from every sender, and per sender.
        self._default_rid: str | None = None
        self._requested_rids: dict[str, str] = {}
        self._left = False
        self._pending_candidates: list[str] = []
        self._pending_reoffer: str | None = None
        self._last_pong = 0.0
        self._setup_deadline = 0.0
        self._ping_task: asyncio.Task[None] | None = None
        self._admit_task: asyncio.Task[None] | None = None
        self._update_task: asyncio.Task[None] | None = None
        self._lifetime_timer: asyncio.TimerHandle | None = None
        self._signaling_notify = True
        # DataChannel signaling (sora-signaling.md §3.2/§3.3).
        self._dc: DataChannelPlan | None = None
        self._dc_open: set[str] = set()
        self._switched = False
        self._ws_open = True
        self._dc_closing = False
        self._reoffer_outstanding = False
        self._ended = asyncio.Event()
        self.last_stats: list[dict[str, Any]] | None = None
        """The client's latest W3C stats report (a ``pong``'s ``stats`` or a ``stats`` message's ``reports``),
        as :meth:`record_stats` cleaned it (its only writer)."""
        self.last_stats_at: datetime | None = None
        """When :attr:`last_stats` arrived (UTC); None until the client sent a report."""
        self._stats_paths_logged: set[str] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "connect": self._on_connect,
            "answer": self._on_answer,
            "re-answer": self._on_reanswer,
            "candidate": self._on_candidate,
            "pong": self._on_pong,
            "stats": self._on_pong,  # stats replies prove liveness too (§16.7)
            "disconnect": self._on_disconnect,
        }

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until it closes."""
        client = self.ws.client
        self.log.debug("websocket opened from %s", f"{client.host}:{client.port}" if client else "?")
        try:
            await self.ws.accept()
        except Exception as exc:
            # The client left during the handshake: nothing to clean up.
            self.log.debug("websocket gone before accept: %r", exc)
            return
        writer = asyncio.create_task(self._writer(), name="signaling-writer")
        self._writer_task = writer
        detached = False
        try:
            await self._reader()
            if self._dc_only:
                # ignore_disconnect_websocket: the client dropped the socket on
                # purpose and goes on over data channels. The WebSocket's
                # request ends here (a server shutdown must not wait for it);
                # the session lives on in a task of its own.
                detached = True
                writer.cancel()
                self.hub.sessions.add(self)
                task = asyncio.create_task(self._live_on_data_channels(), name="signaling-datachannels")
                self.hub.background.add(task)
                task.add_done_callback(self.hub.background.discard)
                return
        except Exception:
            # A bug in this session: keep it to this session.
            self.log.exception("signaling session failed")
            self.close(close_codes.INTERNAL_ERROR, "internal error")
        finally:
            # Once detached, the data channel task owns the ending.
            if not detached:
                self.state = SessionState.CLOSING
                self._leave("websocket closed")
                if self._close_frame is not None and not writer.done():
                    # Let the close frame out (bounded: the client may not be reading).
                    await asyncio.wait({writer}, timeout=_CLOSE_WAIT_S)
                writer.cancel()

    async def _reader(self) -> None:
        connect_deadline = self._loop.time() + self.settings.connect_timeout
        while True:
            if self._close_frame is not None:
                timeout: float | None = _CLOSE_WAIT_S
            elif self.state is SessionState.WS_OPEN:
                timeout = max(0.0, connect_deadline - self._loop.time())
            elif self.state is SessionState.AUTHING:
                # Bounded by the webhook's and the placement's own timeouts.
                timeout = None
            elif self.state in (SessionState.OFFER_SENT, SessionState.NEGOTIATED):
                # A client that never answers, or whose media never comes up,
                # would hold a data plane connection forever.
                timeout = max(0.0, self._setup_deadline - self._loop.time())
            else:
                timeout = None
            try:
                async with asyncio.timeout(timeout):
                    message = await self.ws.receive()
            except TimeoutError:
                if self._close_frame is not None:
                    self.log.debug("no close handshake from the client; dropping the socket")
                    return
                if self.state is SessionState.WS_OPEN:
                    self.close(close_codes.SIGNALING_ERROR, "connect timeout")
                elif self.state is SessionState.OFFER_SENT:
                    self.close(close_codes.SIGNALING_ERROR, "answer timeout")
                elif self.state is SessionState.NEGOTIATED:
                    self.close(close_codes.MEDIA_CLOSED, "media connection timeout: ICE/DTLS did not come up")
                continue

            if message["type"] == "websocket.disconnect":
                self._on_ws_disconnect(message.get("code"), message.get("reason"))
                return
            if self._close_frame is not None:
                continue  # closing: late messages mean nothing
            self._frames_received += 1
            try:
                self._handle_frame(message)
            except SignalingError as exc:
                self.close(exc.code, exc.reason)
            except Exception:
                self.log.exception("error handling a signaling message")
                self.close(close_codes.INTERNAL_ERROR, "internal error")

    async def _writer(self) -> None:
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, _CloseFrame):
                    await self.ws.close(item.code, item.reason)
                    return
                await self.ws.send_text(item)
            except Exception as exc:
                # The client is gone (or going): the reader sees the disconnect.
                self.log.debug("send failed, client gone: %r", exc)
                return

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue a server → client message (dropped once the session is closing)."""
        if self._close_frame is not None:
            return
        if self._outbox.qsize() >= _MAX_OUTBOX:
            self.close(close_codes.POLICY_VIOLATION, "client is not reading its messages")
            return
        self._outbox.put_nowait(messages.dumps(message))

    def close(self, code: int, reason: str) -> None:
        """Leave the channel and close the socket with ``code``/``reason``. Idempotent."""
        if self._close_frame is not None:
            return
        # Data plane messages can span lines; a close reason is one line.
        reason = close_codes.truncate_reason(" ".join(reason.split()))
        if code == close_codes.NORMAL:
            self.log.info("closing: %d %s", code, reason)
        elif code == close_codes.INTERNAL_ERROR:
            self.log.error("closing: %d %s", code, reason)
        else:
            # A client's mistake or a network failure, not a server problem.
            self.log.info("closing: %d %s (state %s)", code, reason, self.state.value)
        if self._switched and not self._dc_closing:
            # §3.3: over DataChannel signaling the client learns the end from
            # a `close` message on `signaling`, then waits (without a
            # timeout) for every data channel to close.
            self._dc_closing = True
            self._dc_send("signaling", {"type": "close", "code": code, "reason": reason})
            self._close_channels()
            if not self._ws_open:
                self._close_frame = _CloseFrame(code, reason)
                self.state = SessionState.CLOSING
                self._leave_soon(reason)
                return
        self._close_frame = _CloseFrame(code, reason)
        self.state = SessionState.CLOSING
        self._leave(reason)
        self._outbox.put_nowait(self._close_frame)

    async def _live_on_data_channels(self) -> None:
        """Keep a DataChannel-only session until it ends (client, API, ICE or shutdown)."""
        try:
            await self._ended.wait()
        finally:
            self.hub.sessions.discard(self)

    @property
    def _dc_only(self) -> bool:
        """Switched with ignore_disconnect_websocket and the socket is gone."""
        return self._switched and not self._ws_open and not self._left

    def _on_ws_disconnect(self, code: int | None, reason: str | None) -> None:
        self._ws_open = False
        if self._close_frame is not None:
            return  # the end of a close we started
        if self._switched and self._request is not None and self._request.ignore_disconnect_websocket:
            # §3.3: the official client closes TCP right after `switched`,
            # without a close frame. Not a disconnect.
            self.log.info("websocket closed after switched (ignore_disconnect_websocket); going on over data channels")
            return
        if code == 1012:
            self.log.info("websocket closed: the server is shutting down")
        elif self._frames_received == 0:
            # Clients race several signaling URLs and close the losers without
            # a word (§3.5): normal, not worth more than debug.
            self.log.debug("websocket closed before any message (code %s)", code)
        else:
            self.log.info("websocket closed by the client (code %s%s)", code, f", {reason}" if reason else "")
        self.state = SessionState.CLOSING
        self._leave(f"websocket closed ({code})")

    def _close_media(self, cid: str) -> None:
        """Remove the connection from the Sfu, after our WebSocket close frame when one is queued.

        The Sfu's DTLS close reaches the client at once, over UDP; if it came
        before the close frame, the client would report a media failure
        instead of the reason the server gave (``DISCONNECTED-API``, ...).
        """
        done = False

        def close(*_: object) -> None:
            nonlocal done
            if done or not self.hub.bridge.running:
                return
            done = True
            try:
                self.hub.bridge.sfu.close_connection(cid)
            except Exception as exc:
                self.log.warning("close_connection failed: %s", exc)

        writer = self._writer_task
        if self._close_frame is None or writer is None or writer.done():
            close()
            return
        writer.add_done_callback(close)
        self._loop.call_later(_CLOSE_FRAME_GRACE_S, close)  # a client that does not read its socket

    def _leave(self, why: str) -> None:
        """Take the connection out of the Sfu and its channel; tell the others. Exactly once."""
        if self._left:
            return
        self._left = True
        self._ended.set()
        self._stop_timers()
        cid = self.connection_id
        if cid is None:
            return
        self.hub.bridge.unregister(cid)
        if self._sfu_has_connection:
            self._sfu_has_connection = False
            self._close_media(cid)
        left = self.hub.registry.leave(cid)
        if left is None:
            return
        channel, member = left
        if member.connected:
            _broadcast_notify(channel, messages.connection_destroyed(channel, member))
            self._emit_left(member)
        self.log.info("left the channel (%s); %d connection(s) remain", why, len(channel.members))

    # -- client messages ---------------------------------------------------------------

    def _handle_frame(self, message: Mapping[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            raise SignalingError("binary frames are not supported; send JSON as text frames")
        limit = self.settings.max_message_bytes
        # len(text) <= bytes <= 4*len(text): encode only when it can matter.
        size = len(text.encode("utf-8")) if len(text) * 4 > limit else 0
        if size > limit:
            # A pong carries the client's stats, about 0.7 KB per received
            # track: it may use the WebSocket layer's whole limit (ws_max_size).
            try:
                msg = parse_message(text)
            except SignalingError:
                msg = None
            if msg is None or msg["type"] != "pong":
                raise SignalingError(f"message too big ({size} bytes > {limit})", close_codes.MESSAGE_TOO_BIG)
        else:
            msg = parse_message(text)
        self._handlers[msg["type"]](msg)

    def _unexpected(self, msg: dict[str, Any]) -> SignalingError:
        return SignalingError(f"unexpected message {msg['type']} in state {self.state.value}")

    def _on_connect(self, msg: dict[str, Any]) -> None:
        if self.state is not SessionState.WS_OPEN:
            raise self._unexpected(msg)
        req = validate_connect(msg)
        self._request = req
        cid = new_connection_id()
        self.connection_id = cid
        self.channel_id = req.channel_id
        self.log.bind(channel_id=req.channel_id, connection_id=cid)
        self.log.info(
            "connect: role=%s audio=%s video=%s client_id=%s client=%s%s",
            req.role,
            req.audio_codec_type if req.audio else False,
            req.video_codec_type if req.video else False,
            req.client_id,
            req.sora_client,
            " (redirected)" if req.redirect else "",
        )
        if req.ignored:
            self.log.info("not supported yet, answered as off: %s", ", ".join(req.ignored))
        if not self.hub.authenticator.enabled and self.settings.placement is None:
            # Nothing to wait for: offer right away, in this handler.
            self._start(AuthResult(req))
            return
        self.state = SessionState.AUTHING
        self._admit_task = asyncio.create_task(self._admit(req), name="signaling-admit")

    async def _admit(self, req: ConnectRequest) -> None:
        """AUTHING: authenticate, ask the placement, then offer, redirect or close."""
        assert self.connection_id is not None
        try:
            result = AuthResult(req)
            if self.hub.authenticator.enabled:
                channel = self.hub.registry.get(req.channel_id)
                result = await self.hub.authenticator.authenticate(
                    req,
                    connection_id=self.connection_id,
                    channel_counts=channel.counts() if channel is not None else Channel.empty_counts(),
                    log=self.log,
                )
                self.log.info(
                    "authenticated%s",
                    f" as client_id={result.request.client_id}" if result.request.client_id != req.client_id else "",
                )
            location = await self._place(result.request)
            if self.state is not SessionState.AUTHING:
                return  # closed meanwhile (the client left, or the API disconnected it)
            if location is not None:
                self._redirect(result.request, location)
            else:
                self._start(result)
        except AuthError as exc:
            self.log.info("authentication failed: %d %s", exc.code, exc.reason)
            self.close(exc.code, exc.reason)
        except SignalingError as exc:
            self.close(exc.code, exc.reason)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            # Only the placement can time out here (the webhook's timeout is an AuthError).
            self.log.error("the placement did not answer within %g s", PLACEMENT_TIMEOUT_S)
            self.close(close_codes.INTERNAL_ERROR, "internal error")
        except Exception:
            self.log.exception("admitting the connection failed")
            self.close(close_codes.INTERNAL_ERROR, "internal error")

    async def _place(self, req: ConnectRequest) -> str | None:
        """Ask the placement where the channel lives: None = here, else a ws(s) URL."""
        placement = self.settings.placement
        if placement is None:
            return None
        async with asyncio.timeout(PLACEMENT_TIMEOUT_S):
            answer = placement(req)
            if inspect.isawaitable(answer):
                answer = await answer
        if answer is None:
            return None
        if not isinstance(answer, str):
            raise TypeError(f"placement returned {type(answer).__name__}, expected str or None")
        return check_location(answer)

    def _redirect(self, req: ConnectRequest, location: str) -> None:
        """Send the client to the node that holds its channel (§3.4) and close."""
        if req.redirect:
            # Following a second redirect would let two nodes that disagree
            # bounce the client forever.
            raise SignalingError(f"redirect loop: already redirected, placement says {location}")
        self.log.info("redirecting to %s", location)
        self.send_message(messages.redirect(location))
        self.close(close_codes.NORMAL, close_codes.REDIRECT)

    def _admit_to_call(self, auth: AuthResult) -> AuthResult:
        """Apply the call's settings when the channel is a stored call (``/v1``); refuse if it cannot join.

        Raises SignalingError 4403 ``call ended`` / ``call is full (N participants)``.
        Media the call does not allow is turned off, as an auth payout would.
        """
        gate = self.hub.calls.admission(auth.request.channel_id)
        if gate is None:
            return auth
        if gate.ended:
            raise SignalingError("call ended", close_codes.CALL_REFUSED)
        settings = gate.settings
        channel = self.hub.registry.get(gate.cid)
        limit = settings.max_participants
        present = len(channel.members) if channel is not None else 0
        if limit is not None and present >= limit:
            raise SignalingError(f"call is full ({limit} participants)", close_codes.CALL_REFUSED)
        req = auth.request
        if (req.audio and not settings.audio) or (req.video and not settings.video):
            req = dataclasses.replace(req, audio=req.audio and settings.audio, video=req.video and settings.video)
        lifetime = auth.connection_lifetime
        if settings.max_duration_seconds is not None:
            lifetime = min(lifetime or math.inf, float(settings.max_duration_seconds))
        return dataclasses.replace(auth, request=req, connection_lifetime=lifetime)

    def _start(self, auth: AuthResult) -> None:
        """Join the channel, create the data plane connection and send the offer."""
        auth = self._admit_to_call(auth)
        req = auth.request
        self._request = req
        self._default_rid = req.simulcast_rid
        cid = self.connection_id
        assert cid is not None
        self._signaling_notify = auth.signaling_notify
        member = Member(
            connection_id=cid,
            channel_id=req.channel_id,
            client_id=req.client_id or cid,
            bundle_id=req.bundle_id or cid,
            role=req.role,
            audio=req.audio,
            video=req.video,
            handle=self,
            notify_metadata=req.signaling_notify_metadata,
            authz_metadata=auth.authz_metadata,
            audio_codec_type=req.audio_codec_type if req.audio else None,
            video_codec_type=req.video_codec_type if req.video else None,
            video_bit_rate=req.video_bit_rate if req.video else None,
            simulcast=req.send_simulcast,
            simulcast_rid=req.simulcast_rid,
            spotlight=req.spotlight,
        )
        channel = self.hub.registry.join(member)
        self._member = member
        plan = DataChannelPlan(signaling=req.data_channel_signaling, messaging=list(req.data_channels))
        self._dc = plan if plan else None
        try:
            created = self.hub.bridge.sfu.create_connection(
                req.channel_id,
                cid,
                send_audio=req.send_audio,
                send_video=req.send_video,
                recv=req.recv,
                video_codec=req.video_codec_type,
                audio_codec=req.audio_codec_type,
                data_channels=cast("list[DataChannelSpec] | None", plan.sfu_specs() if plan else None),
                opus_params=cast("OpusParams | None", req.opus_params if req.send_audio or req.recv else None),
                simulcast_rids=list(simulcast.RIDS) if req.send_simulcast else None,
                simulcast_layer=simulcast.layer_for(req.simulcast_rid or simulcast.DEFAULT_RID),
                # Simulcast receivers (Sora has them connect with simulcast: true)
                # get layers that fit their bandwidth.
                bandwidth_estimation=(req.simulcast or req.spotlight) and req.recv,
                spotlight=simulcast.spotlight_spec(req) if req.spotlight and req.recv else None,
            )
        except ValueError as exc:
            raise SignalingError(str(exc) or "the SFU refused the connection") from None
        self._sfu_has_connection = True
        self.hub.bridge.register(cid, self)
        offer = messages.offer(
            request=req,
            sdp=created.sdp,
            connection_id=cid,
            client_id=member.client_id,
            bundle_id=member.bundle_id,
            session_id=channel.session_id,
            audio_mid=created.audio_mid,
            video_mid=created.video_mid,
            metadata=auth.authz_metadata,
        )
        offer["spotlight"] = req.spotlight
        if req.send_simulcast:
            offer["simulcast"] = True
            offer["encodings"] = (list(req.simulcast_encodings) if req.simulcast_encodings
                                  else simulcast.default_encodings(req.video_bit_rate))
        if plan:
            offer["data_channel_signaling"] = plan.signaling
            offer["ignore_disconnect_websocket"] = plan.signaling and req.ignore_disconnect_websocket
            # Every label we open, system ones included: the C++ client only
            # knows labels listed here (§5.3).
            offer["data_channels"] = plan.offer_entries()
        self.send_message(offer)
        self.state = SessionState.OFFER_SENT
        self._setup_deadline = self._loop.time() + self.settings.answer_timeout
        if auth.connection_lifetime is not None:
            self._lifetime_timer = self._loop.call_later(
                auth.connection_lifetime, self.server_disconnect, close_codes.LIFETIME_EXPIRED
            )
        self.log.debug("offer sent (audio mid %s, video mid %s)", created.audio_mid, created.video_mid)

    def _on_answer(self, msg: dict[str, Any]) -> None:
        if self.state is not SessionState.OFFER_SENT:
            raise self._unexpected(msg)
        sdp = validate_sdp_message(msg)
        self._accept_answer(sdp)
        self.state = SessionState.NEGOTIATED
        # The same allowance again for ICE and DTLS to come up.
        self._setup_deadline = self._loop.time() + self.settings.answer_timeout
        self.log.debug("answer accepted")
        pending, self._pending_candidates = self._pending_candidates, []
        for cand in pending:
            self._add_candidate(cand)
        if self._pending_reoffer is not None:
            sdp, self._pending_reoffer = self._pending_reoffer, None
            self.log.info("re-offer sent (held back until the answer)")
            self._reoffer_outstanding = True
            self.send_message(messages.re_offer(sdp))

    def _on_reanswer(self, msg: dict[str, Any]) -> None:
        if self.state not in (SessionState.NEGOTIATED, SessionState.CONNECTED):
            raise self._unexpected(msg)
        self._accept_answer(validate_sdp_message(msg))
        self._reoffer_outstanding = False
        self.log.info("re-answer accepted")
        self._maybe_switch()

    def _accept_answer(self, sdp: str) -> None:
        assert self.connection_id is not None
        try:
            self.hub.bridge.sfu.accept_answer(self.connection_id, sdp)
        except ValueError as exc:
            raise SignalingError(str(exc) or "the SFU refused the SDP") from None

    def _on_candidate(self, msg: dict[str, Any]) -> None:
        if self.state in (SessionState.WS_OPEN, SessionState.AUTHING):
            raise self._unexpected(msg)
        cand = validate_candidate(msg)
        if cand is None:
            return
        if self.state is SessionState.OFFER_SENT:
            # Trickled ahead of the answer: apply once the answer is in.
            if len(self._pending_candidates) < _MAX_PENDING_CANDIDATES:
                self._pending_candidates.append(cand)
            return
        self._add_candidate(cand)

    def _add_candidate(self, cand: str) -> None:
        assert self.connection_id is not None
        try:
            self.hub.bridge.sfu.add_remote_candidate(self.connection_id, cand)
        except Exception as exc:
            # A candidate we cannot use is not fatal: ICE may work with others
            # (with ice-lite the client checks ours anyway).
            self.log.warning("ignoring remote candidate %r: %s", cand[:100], exc)

    def _on_pong(self, msg: dict[str, Any]) -> None:
        self._last_pong = self._loop.time()
        # A stats ping is answered {"type":"pong","stats":[...]} on the WebSocket;
        # once switched, req-stats is answered {"type":"stats","reports":[...]}
        # on the stats data channel (sora-signaling.md §5.9).
        if msg.get("type") == "pong":
            reports, via = msg.get("stats"), "in pongs"
        else:
            reports, via = msg.get("reports"), "over the data channel" if self._switched else "in stats messages"
        if isinstance(reports, list):
            self.record_stats(reports, via)

    def record_stats(self, reports: list[Any], via: str) -> None:
        """Keep ``reports`` as the client's latest stats (the ``/v1`` connection stats endpoint reads them).

        Only JSON objects are kept, and non-finite numbers (Python's JSON
        parser accepts ``NaN``) become None: a client's report must never make
        the API's JSON answer fail. The first report of each path (``via``) is logged.
        """
        self.last_stats = [sanitize_stats(entry) for entry in reports if isinstance(entry, dict)]
        self.last_stats_at = datetime.now(UTC)
        if via not in self._stats_paths_logged:
            self._stats_paths_logged.add(via)
            self.log.info("stats %s: %d report entries", via, len(self.last_stats))

    def _on_disconnect(self, msg: dict[str, Any]) -> None:
        reason = msg.get("reason")
        self.log.info("client disconnect%s", f" ({reason})" if isinstance(reason, str) else "")
        if self._switched:
            # The client ends it: no `close` message, but the data channels
            # must close (DC-only mode waits for exactly that) and, in
            # hybrid mode, the WebSocket with 1000 TYPE-DISCONNECT (§3.2).
            self._dc_closing = True
            self._close_channels()
            if not self._ws_open:
                self.state = SessionState.CLOSING
                self._leave_soon(close_codes.TYPE_DISCONNECT)
                return
        self.close(close_codes.NORMAL, close_codes.TYPE_DISCONNECT)

    # -- data plane events (called by SfuBridge) ---------------------------------------

    def on_connected(self) -> None:
        """ICE/DTLS are up: announce the connection to its channel, itself included."""
        if self.state not in (SessionState.OFFER_SENT, SessionState.NEGOTIATED):
            self.log.debug("connected event in state %s ignored", self.state.value)
            return
        assert self.connection_id is not None
        marked = self.hub.registry.mark_connected(self.connection_id)
        if marked is None:
            return
        channel, me = marked
        self.state = SessionState.CONNECTED
        self.log.info("connected; %d connection(s) in the channel", channel.counts()["channel_connections"])
        self.hub.webhooks.emit(
            "call.participant_joined",
            call_cid=channel.channel_id,
            call=self.hub.calls.call_snapshot(channel.channel_id),
            participant=me.participant(),
        )
        # Tracks are negotiated with the answer, before the media is up: their
        # webhooks follow the participant's.
        self._emit_published(me, self._published)
        for member in channel.connected_members():
            member.handle.notify(messages.connection_created(channel, me, for_self=member is me))
        self._last_pong = self._loop.time()
        self._ping_task = asyncio.create_task(self._pinger(), name="signaling-ping")
        if self.settings.notify_update_interval > 0:
            self._update_task = asyncio.create_task(self._updater(), name="signaling-updated")

    def on_offer(self, sdp: str) -> None:
        """The Sfu renegotiates: forward as ``re-offer`` (held until the answer is in)."""
        if self.state is SessionState.OFFER_SENT:
            # The client would take a re-offer before its first answer for a
            # second offer; the Rust side holds these back, but be sure.
            self.log.info("re-offer held until the answer")
            self._pending_reoffer = sdp
        elif self.state in (SessionState.NEGOTIATED, SessionState.CONNECTED):
            self._reoffer_outstanding = True
            if self._switched and "signaling" in self._dc_open:
                self.log.info("re-offer sent over the signaling data channel")
                self._dc_send("signaling", messages.re_offer(sdp))
            else:
                self.log.info("re-offer sent")
                self.send_message(messages.re_offer(sdp))
        else:
            self.log.debug("re-offer dropped in state %s", self.state.value)

    def on_closed(self, reason: str | None) -> None:
        """The Sfu dropped the connection (ICE/DTLS failed or timed out)."""
        self._sfu_has_connection = False  # already gone there
        self.close(close_codes.MEDIA_CLOSED, f"media connection closed: {reason or 'unknown'}")

    def on_track_published(self, event: Event) -> None:
        """An upstream track was negotiated: log it and tell the webhooks."""
        self.log.info(
            "track published: %s mid=%s%s", event.media, event.mid, f" codec={event.codec}" if event.codec else ""
        )
        member = self._member
        if member is None or event.media not in ("audio", "video") or event.mid is None:
            return
        track = TrackResponse(
            kind=cast("Literal['audio', 'video']", event.media),
            mid=event.mid,
            codec=event.codec,
            connection_id=member.connection_id,
            user_id=member.client_id,
        )
        self._published.append(track)
        if member.connected:
            # Before that, on_connected announces it right after the participant.
            self._emit_published(member, [track])

    def _emit_published(self, member: Member, tracks: list[TrackResponse]) -> None:
        call = self.hub.calls.call_snapshot(member.channel_id)
        participant = member.participant()
        for track in tracks:
            self.hub.webhooks.emit(
                "call.track_published", call_cid=member.channel_id, call=call, participant=participant, track=track
            )

    def _emit_left(self, member: Member) -> None:
        """Webhooks for a connected member that left: its tracks go, then it does."""
        call = self.hub.calls.call_snapshot(member.channel_id)
        participant = member.participant()
        for track in self._published:
            self.hub.webhooks.emit(
                "call.track_unpublished", call_cid=member.channel_id, call=call, participant=participant, track=track
            )
        self._published.clear()
        self.hub.webhooks.emit("call.participant_left", call_cid=member.channel_id, call=call, participant=participant)

    def on_internal_error(self, exc: BaseException) -> None:
        """Handling a data plane event failed (already logged): close this session only."""
        self.close(close_codes.INTERNAL_ERROR, "internal error")

    # -- data channels --------------------------------------------------------------------

    def on_channel_open(self, label: str) -> None:
        """A data channel we opened is up; switch once the system ones are."""
        self._dc_open.add(label)
        self.log.debug("data channel %s open", label)
        self._maybe_switch()

    def on_channel_close(self, label: str) -> None:
        self._dc_open.discard(label)
        self.log.debug("data channel %s closed", label)
        if self._dc_only and not self._dc_open and not self._dc_closing:
            # DataChannel-only and the client closed every channel: nothing
            # left to talk on.
            self.log.info("all data channels closed by the client")
            self._dc_closing = True
            self.state = SessionState.CLOSING
            self._leave_soon("data channels closed")

    def _leave_soon(self, why: str) -> None:
        """Leave after the data channels' stream resets had time to reach the client.

        Our side reports a channel closed as soon as it queued the reset;
        tearing the connection down right then would lose the reset, and a
        DataChannel-only client waits for exactly those (sora-signaling.md §3.3).
        """
        self._loop.call_later(_DC_GOODBYE_S, self._leave, why)

    def _maybe_switch(self) -> None:
        """Send `switched` when every system channel is open and no WebSocket
        re-offer is outstanding (its answer would be ambiguous, §4.2)."""
        if (
            self._switched
            or self._dc is None
            or not self._dc.signaling
            or self.state is not SessionState.CONNECTED
            or self._reoffer_outstanding
            or not self._ws_open
            or not all(label in self._dc_open for label in SYSTEM_LABELS)
        ):
            return
        assert self._request is not None
        self._switched = True
        ignore = self._request.ignore_disconnect_websocket
        self.send_message({"type": "switched", "ignore_disconnect_websocket": ignore})
        self.log.info("switched to data channel signaling (ignore_disconnect_websocket=%s)", ignore)

    def on_channel_data(self, label: str, data: bytes) -> None:
        """A message on `signaling`, `stats` or `rpc` (messaging labels never get here)."""
        if self._dc is None or self._left:
            return
        try:
            payload = self._dc.decode(label, data)
        except ValueError as exc:
            self.log.warning("dropped a data channel message: %s", exc)
            return
        if label == "rpc":
            self._on_rpc(payload)
            return
        try:
            msg = parse_message(payload.decode("utf-8", errors="replace"))
        except SignalingError as exc:
            self.log.warning("bad message on data channel %s: %s", label, exc.reason)
            return
        kind = msg["type"]
        try:
            if label == "signaling" and kind == "re-answer":
                self._on_reanswer(msg)
            elif label == "signaling" and kind == "disconnect":
                self._on_disconnect(msg)
            elif label == "stats" and kind == "stats":
                self._on_pong(msg)
            else:
                self.log.debug("ignoring %s on data channel %s", kind, label)
        except SignalingError as exc:
            self.close(exc.code, exc.reason)

    def _on_rpc(self, payload: bytes) -> None:
        """JSON-RPC 2.0 on the ``rpc`` data channel (sora-signaling.md §9).

        ``2025.2.0/RequestSimulcastRid`` with ``rid`` (and optionally
        ``sender_connection_id``) chooses this connection's simulcast layer;
        other methods get 'method not found'. Requests without ``id`` are
        notifications and get no answer.
        """
        try:
            req = json.loads(payload)
        except ValueError:
            self._rpc_send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
            return
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            self._rpc_send({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}})
            return
        rid = req.get("id")
        reply: dict[str, Any]
        if req["method"] == "2025.2.0/RequestSimulcastRid":
            params = req.get("params")
            try:
                if not isinstance(params, dict):
                    raise ValueError("params must be an object")
                unknown = set(params) - {"rid", "sender_connection_id"}
                if unknown:
                    raise ValueError(f"unknown params: {', '.join(sorted(unknown))}")
                sender = params.get("sender_connection_id")
                if not isinstance(params.get("rid"), str) or not isinstance(sender, (str, type(None))):
                    raise ValueError("rid must be a string and sender_connection_id a string")
                self.request_simulcast_rid(params["rid"], sender)
            except ValueError as exc:
                reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"Invalid params: {exc}"}}
            else:
                reply = {"jsonrpc": "2.0", "id": rid, "result": {}}
        else:
            reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
        if "id" in req:
            self._rpc_send(reply)

    def request_simulcast_rid(self, rid: str, sender_connection_id: str | None = None) -> None:
        """Receive simulcast layer ``rid`` (``none``, ``r0``..``r2``, ``auto``) from one sender or all.

        The SFU switches on that layer's next keyframe; the client hears of
        it with a ``simulcast.switched`` notify. Raises ValueError for a bad
        rid or an unknown sender.
        """
        layer = simulcast.layer_for(rid)
        if self.connection_id is None or not self._sfu_has_connection:
            raise ValueError("the connection has no media yet")
        if sender_connection_id is not None:
            channel = self.hub.registry.get(self.channel_id or "")
            if channel is None or sender_connection_id not in channel.members:
                raise ValueError(f"no connection {sender_connection_id} in channel {self.channel_id}")
        self.hub.bridge.sfu.set_simulcast_layer(self.connection_id, sender_connection_id, layer)
        if sender_connection_id is None:
            self._requested_rids.clear()
            self._default_rid = rid
        else:
            self._requested_rids[sender_connection_id] = rid
        self.log.info("simulcast rid %s requested%s", rid,
                      f" from {sender_connection_id}" if sender_connection_id else " from every sender")

    def on_spotlight(self, focused: bool) -> None:
        """This connection came into (or went out of) the spotlight: tell the channel's spotlight members."""
        member = self._member
        if member is None:
            return
        channel = self.hub.registry.get(member.channel_id)
        if channel is None:
            return
        self.log.info("spotlight %s", "focused" if focused else "unfocused")
        notify = simulcast.spotlight_notify(member, focused)
        for other in channel.connected_members():
            if other.spotlight:
                other.handle.notify(notify)

    def on_layer_switched(self, event: Event) -> None:
        """The SFU moved one of our subscriptions to another simulcast layer: tell the client."""
        sender = event.stream_id or ""
        self.log.debug("simulcast layer of %s now %s (was %s)", sender, event.rid, event.previous_rid)
        request = self._requested_rids.get(sender, self._default_rid)
        self.notify(simulcast.switched_notify(sender, event.rid, event.previous_rid, request))

    def _dc_send(self, label: str, message: dict[str, Any]) -> None:
        """Send a signaling message on one of our data channels (compressed if the label is)."""
        self._dc_send_bytes(label, messages.dumps(message).encode())

    def _rpc_send(self, message: dict[str, Any]) -> None:
        """Send a JSON-RPC message (which has no signaling ``type``) on ``rpc``."""
        self._dc_send_bytes("rpc", json.dumps(message, separators=(",", ":")).encode())

    def _dc_send_bytes(self, label: str, payload: bytes) -> None:
        if self._dc is None or self.connection_id is None or label not in self._dc_open:
            return
        data = self._dc.encode(label, payload)
        try:
            if not self.hub.bridge.sfu.send_data(self.connection_id, label, data):
                self.log.warning("data channel %s is full; message dropped", label)
        except Exception as exc:
            self.log.debug("data channel %s send failed: %s", label, exc)

    def _close_channels(self) -> None:
        if self._dc is None or self.connection_id is None or not self._sfu_has_connection:
            return
        try:
            self.hub.bridge.sfu.close_channels(self.connection_id)
        except Exception as exc:
            self.log.debug("close_channels failed: %s", exc)

    # -- what the rest of the server does to this connection (channel.ConnectionHandle) ----

    def notify(self, message: dict[str, Any]) -> None:
        """Deliver a ``notify`` (dropped when authentication turned notifies off for this connection).

        Hook for DataChannel signaling: once switched, notifies go on the
        ``notify`` data channel instead of the WebSocket.
        """
        if not self._signaling_notify:
            return
        if self._switched:
            self._dc_send("notify", message)
        else:
            self.send_message(message)

    def push(self, data: dict[str, Any]) -> None:
        """Deliver ``{"type": "push", "data": data}`` (HTTP API Push*).

        Hook for DataChannel signaling: once switched, pushes go on the
        ``push`` data channel instead of the WebSocket.
        """
        if self._switched:
            self._dc_send("push", messages.push(data))
        else:
            self.send_message(messages.push(data))

    def server_disconnect(self, reason: str) -> None:
        """End the connection from the server side, successfully: HTTP API Disconnect*, lifetime.

        Over WebSocket signaling that is a close frame 1000 ``reason``
        (``DISCONNECTED-API``, ``LIFETIME-EXPIRED``), which the official
        client reports as ``CLOSE_SUCCEEDED`` with the reason in the message.

        Hook for DataChannel signaling: once switched, this must instead send
        ``{"type": "close", "code": 1000, "reason": reason}`` on the
        ``signaling`` data channel, then close every data channel (the client
        waits for that without a timeout, sora-signaling.md §3.3), then the
        WebSocket if it is still open.
        """
        self.log.info("disconnected by the server: %s", reason)
        self.close(close_codes.NORMAL, reason)

    def _stop_timers(self) -> None:
        """Cancel every task and timer of this session except the reader/writer. Idempotent."""
        current = asyncio.current_task()
        for task in (self._admit_task, self._ping_task, self._update_task):
            # A task that closes its own session (auth rejection, ping
            # timeout) ends by itself right after.
            if task is not None and task is not current and not task.done():
                task.cancel()
        if self._lifetime_timer is not None:
            self._lifetime_timer.cancel()
            self._lifetime_timer = None

    # -- keep-alive and periodic notifies ------------------------------------------------

    async def _updater(self) -> None:
        """Send this connection's ``connection.updated`` to its channel every interval."""
        interval = self.settings.notify_update_interval
        try:
            while self.state is SessionState.CONNECTED:
                await asyncio.sleep(interval)
                if self.state is not SessionState.CONNECTED or self.connection_id is None:
                    return
                channel = self.hub.registry.channel_of(self.connection_id)
                if channel is None:
                    return
                me = channel.members[self.connection_id]
                _broadcast_notify(channel, messages.connection_updated(channel, me))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("connection.updated loop failed")
            self.close(close_codes.INTERNAL_ERROR, "internal error")

    async def _pinger(self) -> None:
        try:
            while self.state is SessionState.CONNECTED:
                await asyncio.sleep(self.settings.ping_interval)
                if self.state is not SessionState.CONNECTED:
                    return
                if self._switched:
                    # Ask for the client's stats over the stats channel
                    # (§5.9); its answer counts as a pong too.
                    self._dc_send("stats", {"type": "req-stats"})
                if not self._ws_open:
                    # DataChannel-only: ICE consent tells us if the client is gone.
                    continue
                if self._loop.time() - self._last_pong > self.settings.ping_timeout:
                    self.close(close_codes.PING_TIMEOUT, "ping timeout")
                    return
                # Sora's stats ping: the client answers with its W3C stats
                # (sora-signaling.md §5.9), kept for the /v1 stats endpoint.
                # Once switched, req-stats above already asked; a second
                # request would make the client answer twice.
                self.send_message(messages.ping(stats=not self._switched))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("ping loop failed")
            self.close(close_codes.INTERNAL_ERROR, "internal error")


_STATS_MAX_DEPTH = 8
"""Stats entries are flat objects; anything nested deeper than this is dropped (None)."""


def sanitize_stats(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` (a client's parsed JSON stats) that any JSON encoder takes.

    NaN and Infinity (which Python's JSON parser accepts) become None, and
    anything nested deeper than a stats entry could be becomes None.
    """
    if isinstance(value, float):
        return value if value - value == 0.0 else None  # NaN and ±inf give NaN here
    if isinstance(value, dict):
        if depth >= _STATS_MAX_DEPTH:
            return None
        return {key: sanitize_stats(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        if depth >= _STATS_MAX_DEPTH:
            return None
        return [sanitize_stats(item, depth + 1) for item in value]
    return value


def _broadcast_notify(channel: Channel, message: dict[str, Any]) -> None:
    """Deliver ``message`` to every connected member of ``channel``."""
    for member in channel.connected_members():
        member.handle.notify(message)
