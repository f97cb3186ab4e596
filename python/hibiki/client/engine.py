"""The process-wide client engine and the routing of its events.

``hibiki._core.ClientEngine`` runs one Rust thread that hosts every client
connection of the process. It reports through a queue whose wake-up fd
becomes readable when events are pending (engine-notes.md §5, "Bridging to
asyncio", option 3). :class:`EngineHub` registers that fd once on the SDK
loop with ``loop.add_reader`` and, when it fires, drains the queue and hands
each event to the handler registered for its ``event.connection`` handle.

The extension module is imported lazily, here and only here, so that
``import hibiki`` works (for docs, the server, type checking) even where the
Rust extension has not been built.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import HibikiError
from .loop import get_loop, in_loop_thread

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import ClientEngine, Event

__all__ = ["EngineHub", "get_engine", "load_core"]

logger = logging.getLogger("hibiki.client")

EventHandler = Callable[["Event"], None]

# Events that arrive for a handle nobody has registered yet are parked for a
# moment: ``register`` right after ``ClientEngine.connect`` delivers them, so
# the order of connect/registration and of the first event does not matter.
_MAX_ORPHANS_PER_HANDLE = 512
_MAX_ORPHAN_HANDLES = 64
_POLL_BATCH = 256


def load_core() -> Any:
    """Import and return ``hibiki._core`` with a helpful error if it is missing."""
    try:
        import hibiki._core as core
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise HibikiError(
            "the Hibiki data plane (hibiki._core) is not built: install the package "
            "with `pip install .` or build it with `maturin develop` "
            f"(import failed: {exc})"
        ) from exc
    return core


class EngineHub:
    """One ``ClientEngine`` plus the per-connection routing of its events.

    All methods except :meth:`engine` (and the engine's own thread-safe calls
    such as ``write_frame``) are meant to be called on the SDK loop thread.
    """

    def __init__(self) -> None:
        core = load_core()
        self.engine: ClientEngine = core.ClientEngine()
        self._handlers: dict[str, EventHandler] = {}
        self._orphans: dict[str, deque[Event]] = {}
        self._loop = get_loop()
        self._fd = self.engine.fileno()
        self._loop.call_soon_threadsafe(self._loop.add_reader, self._fd, self._drain)

    # -- registration (SDK loop thread) -------------------------------------------------

    def register(self, handle: str, handler: EventHandler) -> None:
        """Route events of ``handle`` to ``handler`` and replay any that came early."""
        assert in_loop_thread(), "EngineHub.register must run on the SDK loop"
        self._handlers[handle] = handler
        early = self._orphans.pop(handle, None)
        if early:
            for event in early:
                self._deliver(handler, event)

    def unregister(self, handle: str) -> None:
        """Stop routing events of ``handle`` (later events are dropped)."""
        self._handlers.pop(handle, None)
        self._orphans.pop(handle, None)

    # -- event pump ---------------------------------------------------------------------

    def _drain(self) -> None:
        # poll_events clears the wake-up; keep polling while full batches come
        # back so one wake-up never leaves events behind.
        while True:
            try:
                events = self.engine.poll_events(_POLL_BATCH)
            except Exception:  # pragma: no cover - a core bug; keep the loop alive
                logger.exception("ClientEngine.poll_events failed")
                return
            for event in events:
                handler = self._handlers.get(event.connection)
                if handler is None:
                    self._park(event)
                else:
                    self._deliver(handler, event)
            if len(events) < _POLL_BATCH:
                return

    def _park(self, event: Event) -> None:
        if event.kind == "closed":
            # A close for a connection we have already forgotten: nothing to do.
            return
        parked = self._orphans.get(event.connection)
        if parked is None:
            if len(self._orphans) >= _MAX_ORPHAN_HANDLES:
                self._orphans.pop(next(iter(self._orphans)))
            parked = self._orphans[event.connection] = deque(maxlen=_MAX_ORPHANS_PER_HANDLE)
        parked.append(event)

    @staticmethod
    def _deliver(handler: EventHandler, event: Event) -> None:
        try:
            handler(event)
        except Exception:
            logger.exception("error while handling engine event %r for %s", event.kind, event.connection)


_hub: EngineHub | None = None
_hub_lock = threading.Lock()


def get_engine() -> EngineHub:
    """Return the process-wide :class:`EngineHub`, creating the engine on first use."""
    global _hub
    hub = _hub
    if hub is None:
        with _hub_lock:
            if _hub is None:
                _hub = EngineHub()
            hub = _hub
    return hub
