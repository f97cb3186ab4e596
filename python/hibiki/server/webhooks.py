"""Outgoing webhooks: call, participant and track events POSTed to the configured URLs.

``hibiki serve --webhook-url URL`` (repeatable) makes the server POST every
event of :data:`hibiki.api.models.WEBHOOK_EVENT_TYPES` as a JSON
:class:`~hibiki.api.models.WebhookEvent` to each URL. Other code calls
:meth:`WebhookDispatcher.emit`; it never waits for the network and never
raises, so a slow or dead receiver cannot delay signaling or media.

Delivery, per URL:

* Headers: ``Content-Type: application/json``, ``X-Webhook-Id`` (the event
  id, the same on every retry), ``X-Webhook-Attempt`` (1, 2, ...),
  ``X-Signature`` (hex HMAC-SHA256 of the exact body bytes keyed with the API
  secret; :func:`hibiki.api.webhook.verify_webhook` checks it) and
  ``X-Api-Key`` when the server has an API key.
* **Without an API secret nothing is signed**: the server sends no
  ``X-Signature`` and says so in its log at startup. That is the open
  local-development mode; a receiver that requires signatures refuses those
  deliveries (and they are retried, then dropped), which is the safe outcome.
* Any 2xx answer within ``webhook_timeout`` seconds (for the whole exchange)
  is success. Another status, a timeout or a connection error is retried
  after ``webhook_backoff`` seconds, doubling each time up to 30 s, until
  ``webhook_max_attempts`` deliveries have failed; then the event is dropped
  for that URL with an error in the log.
* Events reach one URL in the order they were emitted: each URL has its own
  queue and one delivery in flight, so a failing receiver holds back only its
  own later events (up to the queue bound), never another URL's.
* Each URL's queue holds at most ``max_queue`` events; when it is full, new
  events for that URL are dropped with a warning (bounded memory beats an
  unbounded backlog behind a receiver that is down).

At shutdown :meth:`WebhookDispatcher.aclose` lets queued deliveries go out
for a short bounded time (``close_grace``), then abandons the rest (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

from hibiki.api.models import (
    CallResponse,
    MemberResponse,
    ParticipantResponse,
    TrackResponse,
    WebhookEvent,
)
from hibiki.api.webhook import sign_webhook

if TYPE_CHECKING:
    import httpx

__all__ = ["MAX_BACKOFF_S", "WebhookDispatcher", "WebhookSettings", "backoff_delay", "display_url"]

log = logging.getLogger("hibiki.server.webhooks")

MAX_BACKOFF_S: Final = 30.0
"""The longest wait between two deliveries of one event."""
DEFAULT_MAX_QUEUE: Final = 10_000
"""Events waiting per URL before new ones are dropped."""
DEFAULT_CLOSE_GRACE_S: Final = 2.0
"""How long :meth:`WebhookDispatcher.aclose` lets queued deliveries finish.

Short on purpose: server shutdown must stay well under uvicorn's and the
operator's patience, and events are best-effort once the server goes away."""
_DROP_WARNING_INTERVAL_S: Final = 5.0


class WebhookSettings(Protocol):
    """What the dispatcher reads from the settings (``ServerSettings`` has all of it)."""

    @property
    def webhook_urls(self) -> tuple[str, ...]: ...
    @property
    def webhook_timeout(self) -> float: ...
    @property
    def webhook_max_attempts(self) -> int: ...
    @property
    def webhook_backoff(self) -> float: ...
    @property
    def auth_secret(self) -> str | None: ...
    @property
    def api_key(self) -> str | None: ...


@dataclass(frozen=True)
class _Delivery:
    """One event, serialised once, as every URL receives it."""

    event_id: str
    event_type: str
    call_cid: str
    body: bytes
    signature: str | None


@dataclass
class _Target:
    """One webhook URL: its queue and the task delivering from it."""

    url: str
    display: str
    """The URL without query and credentials, for logs (a query may hold a token)."""
    queue: asyncio.Queue[_Delivery]
    task: asyncio.Task[None] | None = None
    in_flight: bool = False
    dropped_since_warning: int = 0
    last_drop_warning: float = field(default=-1e9)


def display_url(url: str) -> str:
    """``url`` as logs show it: without query, fragment or credentials (a query may hold a receiver's token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def backoff_delay(backoff: float, failed_attempts: int) -> float:
    """Seconds to wait after ``failed_attempts`` (1, 2, ...) failed deliveries: ``backoff * 2**(n-1)``, capped at 30."""
    # The exponent is capped too: 2**n of a large n would overflow a float.
    return min(backoff * 2.0 ** min(failed_attempts - 1, 64), MAX_BACKOFF_S)


class WebhookDispatcher:
    """Queues events and delivers them to every configured webhook URL, signed and retried.

    Lives on the server's event loop: call :meth:`start` from it once (the
    lifespan does), :meth:`emit` from anywhere on it, :meth:`aclose` at
    shutdown. With no URLs configured everything is a cheap no-op.
    """

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        close_grace: float = DEFAULT_CLOSE_GRACE_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces httpx's network transport (for embedding; tests use real sockets)."""
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.settings = settings
        self.close_grace = close_grace
        self._transport = transport
        self._targets = [
            _Target(url, display_url(url), asyncio.Queue(maxsize=max_queue)) for url in settings.webhook_urls
        ]
        self._client: httpx.AsyncClient | None = None
        self._started = False
        self._closed = False
        self.delivered = 0
        """Deliveries answered with a 2xx (one per event and URL)."""
        self.failed = 0
        """Events given up for a URL after ``webhook_max_attempts`` failed deliveries."""
        self.dropped = 0
        """Events not queued for a URL: its queue was full, or the dispatcher was closed."""

    # -- state ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when at least one webhook URL is configured."""
        return bool(self._targets)

    @property
    def display_urls(self) -> list[str]:
        """The webhook URLs as logs may show them (see :func:`display_url`)."""
        return [t.display for t in self._targets]

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight, over all URLs (an event counts once per URL)."""
        return sum(t.queue.qsize() + t.in_flight for t in self._targets)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start one delivery task per URL on the running loop (idempotent).

        Events emitted before this are kept (up to the queue bound) and sent now.
        """
        if self._started or self._closed:
            return
        self._started = True
        if not self._targets:
            return
        import httpx

        from hibiki.server.messages import server_version

        loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(
            # The whole exchange is bounded in _post with asyncio.timeout; this
            # bounds each phase too, so sockets are not left waiting.
            timeout=self.settings.webhook_timeout,
            headers={"user-agent": f"hibiki/{server_version()}"},
            # A redirect of a signed POST would be a surprise; receivers answer themselves.
            follow_redirects=False,
            transport=self._transport,
        )
        for target in self._targets:
            target.task = loop.create_task(self._run(target), name=f"hibiki webhook {target.display}")
        log.info(
            "webhooks to %s; %s",
            ", ".join(t.display for t in self._targets),
            "signed with the API secret (X-Signature)"
            if self.settings.auth_secret
            else "UNSIGNED: the server has no API secret, so receivers cannot check where events come from",
        )

    async def aclose(self, grace: float | None = None) -> None:
        """Stop taking events, let queued ones go out for up to ``grace`` seconds (``close_grace``), then stop."""
        if self._closed:
            return
        self._closed = True
        grace = self.close_grace if grace is None else grace
        tasks = [t.task for t in self._targets if t.task is not None]
        if tasks and self.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace, 0.0)):
                    await asyncio.gather(*(t.queue.join() for t in self._targets if t.task is not None))
        left = self.pending
        if left:
            log.warning("webhooks: %d deliveries abandoned at shutdown", left)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- emitting ------------------------------------------------------------------------

    def emit(
        self,
        event_type: str,
        *,
        call_cid: str,
        call: CallResponse | None = None,
        participant: ParticipantResponse | None = None,
        track: TrackResponse | None = None,
        members: Sequence[MemberResponse] | None = None,
    ) -> None:
        """Queue an event for every URL. Never blocks and never raises.

        ``event_type`` is one of :data:`~hibiki.api.models.WEBHOOK_EVENT_TYPES`.
        The event gets a new id (uuid4) and ``created_at`` now (UTC). A bad
        argument is logged as an error and the event is dropped: a webhook
        must never break the signaling or REST code that reports it.
        """
        if not self._targets:
            return
        try:
            if self._closed:
                self.dropped += len(self._targets)
                log.debug("webhooks closed; %s for %s not sent", event_type, call_cid)
                return
            event = WebhookEvent(
                id=str(uuid.uuid4()),
                type=event_type,  # type: ignore[arg-type]  # validated by pydantic
                created_at=datetime.now(UTC),
                call_cid=call_cid,
                call=call,
                participant=participant,
                track=track,
                members=list(members) if members is not None else None,
            )
            body = event.model_dump_json().encode("utf-8")
            secret = self.settings.auth_secret
            delivery = _Delivery(event.id, event_type, call_cid, body, sign_webhook(body, secret) if secret else None)
        except Exception as exc:  # noqa: BLE001 - emit must not raise into its caller
            log.error("webhook %s for %s not sent: cannot build the event: %s", event_type, call_cid, exc)
            return
        for target in self._targets:
            try:
                target.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                self._dropped(target, delivery)

    def _dropped(self, target: _Target, delivery: _Delivery) -> None:
        self.dropped += 1
        target.dropped_since_warning += 1
        now = time.monotonic()
        # One warning per interval: a dead receiver under load would otherwise
        # turn every event into a log line.
        if now - target.last_drop_warning >= _DROP_WARNING_INTERVAL_S:
            log.warning(
                "webhook queue for %s is full (%d events): dropped %d event(s), latest %s for %s",
                target.display,
                target.queue.maxsize,
                target.dropped_since_warning,
                delivery.event_type,
                delivery.call_cid,
            )
            target.last_drop_warning = now
            target.dropped_since_warning = 0

    # -- delivering ----------------------------------------------------------------------

    async def _run(self, target: _Target) -> None:
        """Deliver ``target``'s events one at a time, in order, forever."""
        while True:
            delivery = await target.queue.get()
            target.in_flight = True
            try:
                await self._deliver(target, delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug, not a receiver problem: keep delivering the other events.
                log.exception("webhook %s for %s to %s failed", delivery.event_type, delivery.call_cid, target.display)
            finally:
                target.in_flight = False
                target.queue.task_done()

    async def _deliver(self, target: _Target, delivery: _Delivery) -> None:
        max_attempts = self.settings.webhook_max_attempts
        for attempt in range(1, max_attempts + 1):
            started = time.monotonic()
            problem = await self._post(target.url, delivery, attempt)
            if problem is None:
                self.delivered += 1
                log.debug(
                    "webhook %s %s for %s delivered to %s (attempt %d, %.0f ms)",
                    delivery.event_type,
                    delivery.event_id,
                    delivery.call_cid,
                    target.display,
                    attempt,
                    (time.monotonic() - started) * 1000,
                )
                return
            if attempt == max_attempts:
                self.failed += 1
                log.error(
                    "webhook %s %s for %s to %s dropped after %d attempts: %s",
                    delivery.event_type,
                    delivery.event_id,
                    delivery.call_cid,
                    target.display,
                    attempt,
                    problem,
                )
                return
            delay = backoff_delay(self.settings.webhook_backoff, attempt)
            log.warning(
                "webhook %s for %s to %s failed (attempt %d of %d): %s; retrying in %.1f s",
                delivery.event_type,
                delivery.call_cid,
                target.display,
                attempt,
                max_attempts,
                problem,
                delay,
            )
            await asyncio.sleep(delay)

    async def _post(self, url: str, delivery: _Delivery, attempt: int) -> str | None:
        """One delivery: None on a 2xx, else why it failed."""
        import httpx

        assert self._client is not None
        headers = {
            "content-type": "application/json",
            "x-webhook-id": delivery.event_id,
            "x-webhook-attempt": str(attempt),
        }
        if delivery.signature is not None:
            headers["x-signature"] = delivery.signature
        if self.settings.api_key:
            headers["x-api-key"] = self.settings.api_key
        timeout = self.settings.webhook_timeout
        try:
            # httpx's timeout is per phase; a receiver trickling its answer
            # byte by byte must not hold the queue longer than the timeout.
            async with asyncio.timeout(timeout):
                response = await self._client.post(url, content=delivery.body, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
