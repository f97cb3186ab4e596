"""What the shape of a networked Opus pipeline costs on this machine, with no WebRTC in it (for B6).

B6 holds the SDK against a raw PyAV loop that runs the codec and nothing
else. A real sender or receiver also crosses a socket, and a media SDK hands
each packet between threads: the caller, the codec worker, the network
thread (sora-sdk's libwebrtc, aiortc and Hibiki all do). Every hand-over is a
wake-up, and on a VM a wake-up costs tens to hundreds of microseconds of
scheduler work and cold caches, which for a 20 ms Opus packet is the size of
the codec's own work. These loops measure that floor with nothing but the
codec (given as a function; B6 passes the SDK's libopus path), a UDP socket
on loopback and ``queue.SimpleQueue``: no RTP, SRTP, RTCP, jitter buffer or
bandwidth estimation.

- **one thread**: a paced loop that encodes a chunk and sends it
  (``sendto``); a loop that blocks on ``recv`` and decodes what arrives.
- **three threads**, the SDK's shape: the caller's paced loop copies the
  chunk and queues it, a codec thread encodes it and queues the packet, a
  network thread sends it; on receive a network thread receives, a codec
  thread decodes and queues the PCM, and a reader thread takes it.
- **two threads** (receive only): a network thread receives, a codec thread
  decodes and hands the PCM to a callback, as the SDK's sinks do
  (``AudioStreamSink.on_frame``, sora-sdk's receive shape).

CPU is each counted thread's own (``time.thread_time``, user + system, its
wake-ups included) per packet, and the caller's empty pacing loop is taken
out, as B6 does for the SDK. The remote end (the receiver of what is sent,
the paced sender of what is received) is not counted.

Run alone: ``.venv/bin/python benches/pipeline_floor.py``.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from media_cpu_peer import paced, pacing_cost

RATE = 48_000
FRAME = 960  # 20 ms
PACKETS_PER_S = RATE / FRAME

_STOP = object()


class _Counted(threading.Thread):
    """A thread that records its own CPU time over ``body``."""

    def __init__(self, name: str, body: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._body = body
        self.cpu = 0.0

    def run(self) -> None:
        t = time.thread_time()
        try:
            self._body()
        finally:
            self.cpu = time.thread_time() - t


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.settimeout(2.0)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return tx, rx


def _drain(rx: socket.socket, done: threading.Event) -> None:
    """The remote receiver: takes whatever is sent (not counted)."""
    rx.settimeout(0.2)
    while not done.is_set():
        try:
            rx.recv(4096)
        except TimeoutError:
            pass


def send_floor(encode: Callable[[np.ndarray], list[bytes]], chunks: list[np.ndarray], n: int,
               threads: int) -> dict[str, float]:
    """CPU per packet (seconds), by thread, to ``encode`` ``n`` paced 20 ms chunks and send them over UDP.

    ``threads`` is 1 (all in the caller's paced loop) or 3 (caller -> codec
    thread -> network thread, through queues).
    """
    if threads not in (1, 3):
        raise ValueError("threads must be 1 or 3")
    tx, rx = _udp_pair()
    done = threading.Event()
    drain = threading.Thread(target=_drain, args=(rx, done), daemon=True)
    drain.start()

    counted: list[_Counted] = []
    pacing = pacing_cost(PACKETS_PER_S, min(n, 100) / PACKETS_PER_S) * n
    if threads == 1:
        def caller() -> None:
            for i in paced(n, PACKETS_PER_S):
                for data in encode(chunks[i % len(chunks)]):
                    tx.send(data)
        counted.append(_Counted("floor-caller", caller))
    else:
        to_codec: queue.SimpleQueue[Any] = queue.SimpleQueue()
        to_net: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def caller() -> None:
            for i in paced(n, PACKETS_PER_S):
                to_codec.put(np.array(chunks[i % len(chunks)], copy=True))  # as on_data copies
            to_codec.put(_STOP)

        def codec() -> None:
            while (pcm := to_codec.get()) is not _STOP:
                for data in encode(pcm):
                    to_net.put(data)
            to_net.put(_STOP)

        def net() -> None:
            while (data := to_net.get()) is not _STOP:
                tx.send(data)

        counted += [_Counted("floor-caller", caller), _Counted("floor-codec", codec), _Counted("floor-net", net)]
    for t in counted:
        t.start()
    for t in counted:
        t.join()
    done.set()
    drain.join()
    tx.close()
    rx.close()
    return {t.name: (t.cpu - (pacing if t.name == "floor-caller" else 0.0)) / n for t in counted}


def receive_floor(decode: Callable[[bytes], list[object]], packets: list[bytes], threads: int) -> dict[str, float]:
    """CPU per packet (seconds), by thread, to receive ``packets`` (sent at 50/s over UDP) and ``decode`` them.

    ``decode`` gives what a user gets (int16 PCM). ``threads`` is 1 (receive
    and decode in one loop), 2 (network thread -> codec thread, which calls
    the user) or 3 (network thread -> codec thread -> reader thread, through
    queues).
    """
    if threads not in (1, 2, 3):
        raise ValueError("threads must be 1, 2 or 3")
    tx, rx = _udp_pair()
    got = [0]

    def remote() -> None:
        for i in paced(len(packets), PACKETS_PER_S):
            tx.send(packets[i])
        tx.send(b"")  # end of stream

    counted: list[_Counted] = []
    if threads == 1:
        def loop() -> None:
            while data := _recv(rx):
                got[0] += len(decode(data))
        counted.append(_Counted("floor-net", loop))
    else:
        to_codec: queue.SimpleQueue[Any] = queue.SimpleQueue()
        to_reader: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def net() -> None:
            while data := _recv(rx):
                to_codec.put(data)
            to_codec.put(_STOP)

        def on_pcm(pcm: object) -> None:
            got[0] += 1

        def codec() -> None:
            deliver = on_pcm if threads == 2 else to_reader.put
            while (data := to_codec.get()) is not _STOP:
                for pcm in decode(data):
                    deliver(pcm)
            to_reader.put(_STOP)

        def reader() -> None:
            while to_reader.get() is not _STOP:
                got[0] += 1

        counted += [_Counted("floor-net", net), _Counted("floor-codec", codec)]
        if threads == 3:
            counted.append(_Counted("floor-reader", reader))
    for t in counted:
        t.start()
    sender = threading.Thread(target=remote, name="floor-remote", daemon=True)
    sender.start()
    for t in counted:
        t.join()
    sender.join()
    tx.close()
    rx.close()
    return {t.name: t.cpu / max(got[0], 1) for t in counted}


def _recv(rx: socket.socket) -> bytes:
    try:
        return rx.recv(4096)
    except TimeoutError:
        return b""


def _main() -> None:
    import sys
    from pathlib import Path

    from hibiki.media import AudioDecoder, AudioEncoder

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from media_cpu_peer import audio_chunks

    chunks = audio_chunks()
    n = 400
    for threads in (1, 3):
        enc = AudioEncoder("OPUS", RATE, 2, 64_000)
        _show(f"send, {threads} thread(s)", send_floor(lambda pcm: [f.data for f in enc.encode(pcm)], chunks, n, threads))
    enc = AudioEncoder("OPUS", RATE, 2, 64_000)
    packets = [f.data for i in range(n) for f in enc.encode(chunks[i % len(chunks)])]
    for threads in (1, 2, 3):
        dec = AudioDecoder("OPUS", 2)
        _show(f"receive, {threads} thread(s)", receive_floor(lambda data: [dec.decode(data)], packets, threads))


def _show(what: str, cpu: dict[str, float]) -> None:
    parts = ", ".join(f"{name} {s * 1e6:.0f}" for name, s in cpu.items())
    print(f"{what}: {sum(cpu.values()) * 1e6:.0f} us/packet ({parts})", flush=True)


if __name__ == "__main__":
    _main()
