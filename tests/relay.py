"""A user-space UDP relay that impairs the path: rate cap, loss, delay, jitter, reordering.

Our machines have no netem qdisc, so tests put this relay between clients and
the server's media port instead. It behaves like a NAT in front of the
server: a client sends to the relay's listening address, the relay forwards
from a socket of its own per client (so the server sees one address per
client and answers there), and relays the answers back::

    client ──► relay (listen) ──► server        "up"
    client ◄── relay (listen) ◄── server        "down"

Each direction is a :class:`Link`: a bottleneck of ``rate_bps`` with a
drop-tail queue of ``queue_ms`` (a packet that would wait longer is dropped,
as a router would), then ``delay_ms`` plus up to ``jitter_ms`` of random
extra delay, random ``loss`` and, with probability ``reorder``, an extra
``reorder_ms`` that lets later packets overtake. Links can be changed while
the relay runs (``relay.down.rate_bps = 500_000``).

To make clients use it, start ``hibiki serve`` with ``--public-ip`` set to
another loopback address (127.0.0.2) and a fixed ``--rtc-port``: the
server's ICE candidate then names that address, where only the relay
listens (see :func:`media_relay`).

Everything runs on one thread with a timer heap; the relay stops by itself
after ``max_seconds`` so that a test that forgets it cannot leave it running.
"""

from __future__ import annotations

import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass
class Link:
    """What one direction of the path does to packets."""

    rate_bps: float | None = None
    """Bottleneck rate in bit/s (None: unlimited)."""
    queue_ms: float = 200.0
    """Drop-tail queue in front of the bottleneck, as the time to drain it."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    """Probability that a packet is dropped at random."""
    reorder: float = 0.0
    """Probability that a packet is held back ``reorder_ms`` longer than its neighbours."""
    reorder_ms: float = 20.0
    forwarded: int = 0
    dropped_queue: int = 0
    dropped_loss: int = 0
    bytes_forwarded: int = 0
    _free_at: float = field(default=0.0, repr=False)

    def schedule(self, now: float, size: int, rng: random.Random) -> float | None:
        """When a packet of ``size`` bytes arriving ``now`` leaves the link (None: dropped)."""
        if self.loss and rng.random() < self.loss:
            self.dropped_loss += 1
            return None
        depart = now
        if self.rate_bps:
            start = max(now, self._free_at)
            if (start - now) * 1000.0 > self.queue_ms:
                self.dropped_queue += 1
                return None
            depart = start + size * 8.0 / self.rate_bps
            self._free_at = depart
        depart += self.delay_ms / 1000.0
        if self.jitter_ms:
            depart += rng.random() * self.jitter_ms / 1000.0
        if self.reorder and rng.random() < self.reorder:
            depart += self.reorder_ms / 1000.0
        self.forwarded += 1
        self.bytes_forwarded += size
        return depart


class UdpRelay:
    """Relays UDP between clients and ``target`` through impaired links (see the module docstring)."""

    def __init__(self, listen: Address, target: Address, *, seed: int = 1, max_seconds: float = 300.0) -> None:
        self.up = Link()
        self.down = Link()
        self.target = target
        self._rng = random.Random(seed)
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind(listen)
        self._listen.setblocking(False)
        # Keyframes arrive as bursts of tens of packets: let the kernel hold
        # them until this thread reads, so that only the Link decides drops.
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.address: Address = self._listen.getsockname()
        self._upstream: dict[Address, socket.socket] = {}
        self._client_of: dict[socket.socket, Address] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listen, selectors.EVENT_READ)
        self._heap: list[tuple[float, int, socket.socket, bytes, Address]] = []
        self._seq = itertools.count()
        self._deadline = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)
        self.lock = threading.Lock()
        """Hold it to change both links at once."""

    def start(self) -> UdpRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self._listen, *self._upstream.values()]:
            sock.close()
        self._selector.close()

    def __enter__(self) -> UdpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _socket_for(self, client: Address) -> socket.socket:
        sock = self._upstream.get(client)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.target[0], 0))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            self._upstream[client] = sock
            self._client_of[sock] = client
            self._selector.register(sock, selectors.EVENT_READ)
        return sock

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            now = time.monotonic()
            timeout = 0.05 if not self._heap else max(0.0, min(0.05, self._heap[0][0] - now))
            for key, _ in self._selector.select(timeout):
                self._read(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, sock, data, dest = heapq.heappop(self._heap)
                try:
                    sock.sendto(data, dest)
                except OSError:
                    pass  # like a lossy network

    def _read(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, source = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now = time.monotonic()
            with self.lock:
                if sock is self._listen:
                    out, dest, when = self._socket_for(source), self.target, self.up.schedule(now, len(data), self._rng)
                else:
                    out, dest, when = self._listen, self._client_of[sock], self.down.schedule(
                        now, len(data), self._rng)
            if when is not None:
                heapq.heappush(self._heap, (when, next(self._seq), out, data, dest))


@contextmanager
def media_relay(server_rtc_port: int, relay_ip: str = "127.0.0.2") -> Iterator[UdpRelay]:
    """A relay on ``relay_ip`` at the server's media port, forwarding to 127.0.0.1.

    The server must run with ``--public-ip relay_ip --rtc-port server_rtc_port``.
    """
    with UdpRelay((relay_ip, server_rtc_port), ("127.0.0.1", server_rtc_port)) as relay:
        yield relay
