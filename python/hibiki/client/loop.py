"""The SDK's own threads: one asyncio loop and one callback thread per process.

Everything that talks to the network on the Python side (signaling WebSockets,
the engine's wake-up fd) runs on a single asyncio loop in a daemon thread named
``hibiki-loop``. It is started lazily, the first time a connection needs it,
and lives as long as the process. Running signaling on our own loop is what
lets both faces of the SDK share one implementation: the thread/callback face
blocks on ``concurrent.futures`` results, the asyncio face awaits
``asyncio.wrap_future`` from whatever loop the user runs.

User callbacks of the callback face (``on_notify``, ``on_track``,
``on_disconnect``...) do not run on that loop: they are queued to a second
daemon thread, ``hibiki-callbacks``. A slow or blocking callback (for example
one that calls ``connection.disconnect()``) then cannot stall signaling,
keep-alives or engine events, and callbacks still arrive in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "CALLBACK_THREAD_NAME",
    "LOOP_THREAD_NAME",
    "call_soon",
    "dispatch_callback",
    "get_loop",
    "in_loop_thread",
    "run_coroutine",
]

logger = logging.getLogger("hibiki.client")

LOOP_THREAD_NAME = "hibiki-loop"
CALLBACK_THREAD_NAME = "hibiki-callbacks"

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_pid: int | None = None

_callbacks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], str]] | None = None
_callback_thread: threading.Thread | None = None
_callback_pid: int | None = None


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:  # pragma: no cover - the loop normally lives until the process exits
        loop.close()


def get_loop() -> asyncio.AbstractEventLoop:
    """Return the SDK event loop, starting its thread on first use.

    After ``os.fork()`` the child has no loop thread, so a new one is started
    there (the pid check makes that automatic).
    """
    global _loop, _loop_thread, _loop_pid
    pid = os.getpid()
    loop = _loop
    if loop is not None and _loop_pid == pid and not loop.is_closed():
        return loop
    with _lock:
        if _loop is None or _loop_pid != pid or _loop.is_closed():
            new_loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=_run_loop, args=(new_loop, ready), name=LOOP_THREAD_NAME, daemon=True
            )
            thread.start()
            ready.wait()
            _loop, _loop_thread, _loop_pid = new_loop, thread, pid
        return _loop


def in_loop_thread() -> bool:
    """True when called on the SDK loop thread (where blocking would deadlock)."""
    return _loop_thread is not None and threading.current_thread() is _loop_thread


def run_coroutine(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the SDK loop from any thread and return its future."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on the SDK loop as soon as possible (thread-safe)."""
    get_loop().call_soon_threadsafe(fn, *args)


def _callback_worker(q: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], str]]) -> None:
    while True:
        fn, args, what = q.get()
        try:
            fn(*args)
        except Exception:
            # A user's callback must never take the SDK down with it.
            logger.exception("exception in user callback %s", what)
        finally:
            # Drop references promptly so that objects captured by a callback
            # (frames, tracks) are not kept alive until the next callback.
            del fn, args


def dispatch_callback(fn: Callable[..., Any] | None, *args: Any, what: str = "") -> None:
    """Queue ``fn(*args)`` to the callback thread; ``None`` is ignored.

    Exceptions raised by ``fn`` are logged (with ``what`` to say which
    callback it was) and swallowed.
    """
    global _callbacks, _callback_thread, _callback_pid
    if fn is None:
        return
    pid = os.getpid()
    if _callbacks is None or _callback_pid != pid:
        with _lock:
            if _callbacks is None or _callback_pid != pid:
                q: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], str]] = (
                    queue.SimpleQueue()
                )
                thread = threading.Thread(
                    target=_callback_worker, args=(q,), name=CALLBACK_THREAD_NAME, daemon=True
                )
                thread.start()
                _callbacks, _callback_thread, _callback_pid = q, thread, pid
    assert _callbacks is not None
    _callbacks.put((fn, args, what or getattr(fn, "__qualname__", repr(fn))))


def call_user(fn: Callable[..., Any] | None, *args: Any, what: str = "") -> None:
    """Call a user callback right here, logging (not raising) its exceptions.

    Used on media worker threads (``on_frame``, ``on_data``) where the extra
    hop through the callback thread would add latency for no benefit.
    """
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:
        logger.exception("exception in user callback %s", what or getattr(fn, "__qualname__", fn))
