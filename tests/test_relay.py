"""The test relay (tests/relay.py) impairs what it forwards as configured: rate, queue, loss, delay, reordering."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from relay import Link, UdpRelay


@contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """A UDP echo server on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            sock.sendto(data, peer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def exchange(relay: UdpRelay, count: int, size: int = 1000, interval: float = 0.0,
             settle: float = 1.0) -> list[tuple[int, float, float]]:
    """Send ``count`` numbered datagrams through the relay; (number, sent, received) of those echoed."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    client.settimeout(0.05)
    sent: dict[int, float] = {}
    got: list[tuple[int, float, float]] = []
    done = threading.Event()

    def receive() -> None:
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            if deadline is None and done.is_set():
                deadline = time.monotonic() + settle
            try:
                data, _ = client.recvfrom(65536)
            except TimeoutError:
                continue
            n = int.from_bytes(data[:4], "big")
            got.append((n, sent[n], time.monotonic()))

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    for i in range(count):
        sent[i] = time.monotonic()
        client.sendto(i.to_bytes(4, "big") + bytes(size - 4), relay.address)
        if interval:
            time.sleep(interval)
    done.set()
    reader.join(settle + 5)
    client.close()
    return got


def test_clean_path_forwards_everything_in_order() -> None:
    with echo_server() as target, UdpRelay(("127.0.0.1", 0), target) as relay:
        got = exchange(relay, 200, interval=0.001)
    assert [n for n, _, _ in got] == list(range(200))
    assert relay.up.forwarded == relay.down.forwarded == 200


def test_rate_cap_drops_what_the_queue_cannot_hold() -> None:
    with echo_server() as target, UdpRelay(("127.0.0.1", 0), target) as relay:
        relay.up = Link(rate_bps=800_000, queue_ms=100)
        got = exchange(relay, 400, size=1000, settle=1.5)  # 3.2 Mbit in a burst
    received = [n for n, _, _ in got]
    # The queue holds 100 ms at 800 kbit/s = 10 packets, plus the one on the wire.
    assert 8 <= len(received) <= 14, len(received)
    # (A burst beyond the kernel's socket buffer is dropped before the relay sees it.)
    assert relay.up.forwarded == len(received) and relay.up.dropped_queue > 100
    span = got[-1][2] - got[0][2]
    rate = (len(received) - 1) * 8000 / span
    assert 600_000 < rate < 1_000_000, f"{rate:.0f} bit/s through an 800 kbit/s link"


def test_delay_jitter_loss_and_reorder() -> None:
    with echo_server() as target, UdpRelay(("127.0.0.1", 0), target, seed=3) as relay:
        relay.up = Link(delay_ms=50)
        got = exchange(relay, 20, interval=0.005)
        delays = [r - s for _, s, r in got]
        assert len(got) == 20 and min(delays) >= 0.05 and max(delays) < 0.2, delays

        relay.up = Link(loss=0.3)
        got = exchange(relay, 500, interval=0.0005)
        assert 250 < len(got) < 450, len(got)
        assert relay.up.dropped_loss == 500 - len(got)

        relay.up = Link(reorder=0.2, reorder_ms=30)
        got = exchange(relay, 200, interval=0.002)
        order = [n for n, _, _ in got]
        assert sorted(order) == list(range(200)), "reordered, none lost"
        assert order != sorted(order), "some packets overtaken"

        relay.up = Link(delay_ms=20, jitter_ms=40)
        got = exchange(relay, 100, interval=0.002)
        delays = sorted(r - s for _, s, r in got)
        assert delays[-1] - delays[0] > 0.02, "jitter spreads the delays"
