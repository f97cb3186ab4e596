"""The Stream-style asyncio join: ``client.video.rtc_call(type, id).join(user_id)``.

Real ``hibiki serve`` processes, real Hibiki connections, real codecs.
Content is checked end to end: every video frame shows the sender's counter
pattern (read back with :func:`hibiki.media.testsrc.read_counter`, bars intact)
and each user's audio is a tone of its own frequency. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hibiki
import numpy as np
import pytest
from conftest import REPO, ServerProcess, run
from hibiki.api import AsyncClient, Client
from hibiki.api.rtc import CallConnection, CallEvent, CustomEvent, Participant, RtcCall, _EventQueue
from hibiki.media.testsrc import dominant_frequency, pattern_intact, read_counter, test_pattern, tone

SECRET = "test-secret-for-call-join-0123456789abcdef"
KEY = "test-api-key"
WIDTH, HEIGHT, FPS = 160, 120, 15
RATE = 48_000
CHUNK = RATE // 50  # 20 ms

# Each user sends a pattern counter in its own range and a tone of its own
# frequency, so that what a receiver gets can be traced to its sender.
USERS: dict[str, tuple[int, float]] = {"alice": (100_000, 440.0), "bob": (200_000, 1000.0)}


def new_call_id() -> str:
    return f"join-{uuid.uuid4().hex[:10]}"


@contextmanager
def feeding(audio: hibiki.AudioSource | None, video: hibiki.VideoSource | None, user: str) -> Iterator[None]:
    """Feed ``user``'s tone and counter pattern in real time while the block runs."""
    counter_base, frequency = USERS[user]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run_feed() -> None:
        start = time.monotonic()
        sample, counter, next_video = 0, counter_base, start
        try:
            while not stop.is_set():
                now = time.monotonic()
                # Audio: 20 ms chunks on the wall clock; on_data paces itself when ahead.
                while audio is not None and sample < (now - start) * RATE:
                    audio.on_data(tone(frequency, RATE, 1, sample, CHUNK))
                    sample += CHUNK
                if video is not None and now >= next_video:
                    video.on_captured(test_pattern(counter, WIDTH, HEIGHT))
                    counter += 1
                    next_video += 1.0 / FPS
                stop.wait(0.005)
        except BaseException as exc:  # noqa: BLE001 - surfaced when the block ends
            errors.append(exc)

    thread = threading.Thread(target=run_feed, daemon=True, name=f"feed-{user}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        assert not errors, f"{user}'s feeder failed: {errors!r}"


@dataclass
class Seen:
    """What one user's event loop saw, summarised as it arrives (frames are not kept)."""

    events: list[CallEvent] = field(default_factory=list)
    """Every event but rtc_packet (see :func:`collect`)."""
    packets: int = 0
    counters: dict[str, list[int | None]] = field(default_factory=dict)
    intact: dict[str, list[bool]] = field(default_factory=dict)
    pcm: dict[str, list[np.ndarray]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, kind: str) -> list[Any]:
        return [getattr(e, kind) for e in self.events if e.type == kind]

    def samples(self, user: str) -> int:
        return sum(len(p) for p in self.pcm.get(user, []))

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; events: {self.types()}") from None


async def collect(connection: CallConnection, seen: Seen) -> None:
    """Read every event of ``connection`` into ``seen`` until ``disconnected``.

    Frames are summarised (counter read, PCM kept) and their events not kept,
    so that a long test holds no decoded pictures.
    """
    async for event in connection:
        record(seen, event)
    seen.changed.set()


def record(seen: Seen, event: CallEvent) -> None:
    """Add one event to ``seen`` (frames summarised: counter read, PCM kept)."""
    packet = event.rtc_packet
    if packet is None:
        seen.events.append(event)
    else:
        seen.packets += 1
        user = packet.participant.user_id
        if packet.video is not None:
            assert packet.kind == "video" and packet.audio is None
            bgr = packet.video.data()
            counter = read_counter(bgr)
            seen.counters.setdefault(user, []).append(counter)
            seen.intact.setdefault(user, []).append(counter is not None and pattern_intact(bgr, counter))
        else:
            assert packet.audio is not None and packet.kind == "audio"
            seen.pcm.setdefault(user, []).append(packet.audio.data())
    seen.changed.set()


def check_media_from(seen: Seen, user: str) -> None:
    """The frames received from ``user`` are ``user``'s: counters in range and rising, bars intact, right tone."""
    counter_base, frequency = USERS[user]
    counters = seen.counters[user]
    values = [c for c in counters if c is not None]
    assert len(values) >= 0.9 * len(counters), f"unreadable counters from {user}: {counters}"
    assert all(counter_base <= c < counter_base + 100_000 for c in values), f"counters not {user}'s: {values[:5]}"
    assert all(b > a for a, b in itertools.pairwise(values)), f"counters do not rise: {values}"
    assert sum(seen.intact[user]) >= 0.9 * len(seen.intact[user]), f"garbled pictures from {user}"
    pcm = np.concatenate(seen.pcm[user])[-RATE // 2:]  # the last 0.5 s: past the decoder's start-up
    assert abs(dominant_frequency(pcm, RATE) - frequency) < 10.0, f"{user}'s tone is not {frequency} Hz"


def media_arrived(seen: Seen, user: str) -> bool:
    return len(seen.counters.get(user, [])) >= 10 and seen.samples(user) >= RATE


# -- the README example: two users, media both ways, leave, end -------------------------------------


async def two_users_meet(client_factory: Callable[[], Any], server: ServerProcess, *, create: bool,
                         end_with: Any = None) -> tuple[Seen, Seen]:
    """alice and bob join one call and publish; each checks the other's media; bob leaves.

    Returns what alice and bob saw.
    """
    sdk = hibiki.Hibiki()
    call_id = new_call_id()
    client = client_factory()
    rtc = client.video.rtc_call("default", call_id)
    assert isinstance(rtc, RtcCall) and rtc.cid == f"default:{call_id}"
    sources = {u: (sdk.create_audio_source(1, RATE), sdk.create_video_source()) for u in USERS}
    seen = {u: Seen() for u in USERS}
    async with rtc.join("alice", create=create, video_codec_type="VP8") as alice:
        assert alice.participants == {} and alice.call_cid == rtc.cid and alice.user_id == "alice"
        alice_reader = asyncio.create_task(collect(alice, seen["alice"]))
        await alice.add_tracks(audio=sources["alice"][0], video=sources["alice"][1])
        with feeding(*sources["alice"], "alice"):
            bob_rtc = client.video.rtc_call("default", call_id)
            async with bob_rtc.join("bob", create=create, video_codec_type="VP8") as bob:
                # alice was there before bob: bob knows her on entry and got her participant_joined.
                assert [p.user_id for p in bob.participants.values()] == ["alice"]
                bob_reader = asyncio.create_task(collect(bob, seen["bob"]))
                await bob.add_tracks(audio=sources["bob"][0], video=sources["bob"][1])
                with feeding(*sources["bob"], "bob"):
                    await seen["alice"].wait(lambda: media_arrived(seen["alice"], "bob"), "bob's media at alice")
                    await seen["bob"].wait(lambda: media_arrived(seen["bob"], "alice"), "alice's media at bob")
                for user, other in (("alice", "bob"), ("bob", "alice")):
                    joined = seen[user].of("participant_joined")
                    assert [p.user_id for p in joined] == [other], f"{user} saw joins {joined}"
                    published = seen[user].of("track_published")
                    assert sorted(t.kind for t in published) == ["audio", "video"]
                    assert {t.participant.user_id for t in published} == {other}
                    check_media_from(seen[user], other)
                    assert user not in seen[user].counters  # never our own media
                bob_connection_id = bob.connection_id
                assert bob_connection_id in alice.participants
                if end_with is not None:
                    await end_with(client, rtc)
                    await asyncio.wait_for(bob_reader, 15)
                    await asyncio.wait_for(alice_reader, 15)
                    return seen["alice"], seen["bob"]
            # bob left: alice sees him go, with his tracks.
            await asyncio.wait_for(bob_reader, 10)
            await seen["alice"].wait(lambda: bool(seen["alice"].of("participant_left")), "bob's participant_left")
            await seen["alice"].wait(lambda: len(seen["alice"].of("track_unpublished")) == 2, "bob's tracks going")
            left = seen["alice"].of("participant_left")
            assert [(p.user_id, p.connection_id) for p in left] == [("bob", bob_connection_id)]
            assert alice.participants == {}
    await asyncio.wait_for(alice_reader, 10)
    for user in USERS:
        assert seen[user].types()[-1] == "disconnected", seen[user].types()
        assert seen[user].types().count("disconnected") == 1
    return seen["alice"], seen["bob"]


def test_two_users_open_server(server: ServerProcess) -> None:
    """A server without a secret: no token, calls not stored (create=False)."""
    run(two_users_meet(lambda: AsyncClient(base_url=server.url), server, create=False), timeout=90)


def test_two_users_with_secret_and_stored_call(server_factory: Callable[..., ServerProcess]) -> None:
    """With --api-secret: the call is created over REST and each user joins with a token the client made."""
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)
    alice_seen, _ = run(two_users_meet(
        lambda: AsyncClient(api_key=KEY, api_secret=SECRET, base_url=server.url), server, create=True), timeout=90)
    assert alice_seen.types()[-1] == "disconnected"


def test_ending_the_call_reaches_both_and_refuses_later_joins(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)
    ended_at: list[Any] = []

    async def end(client: AsyncClient, rtc: RtcCall) -> None:
        response = await client.video.call(rtc.type, rtc.id).end()
        assert len(response.connection_ids) == 2
        ended_at.append(response.call.ended_at)

    async def scenario() -> tuple[Seen, Seen]:
        client = AsyncClient(api_key=KEY, api_secret=SECRET, base_url=server.url)
        seen = await two_users_meet(lambda: client, server, create=True, end_with=end)
        return seen

    alice, bob = run(scenario(), timeout=90)
    for seen in (alice, bob):
        types = seen.types()
        # Everyone hears call_ended before anyone is disconnected; the other's
        # participant_left may come between it and our own end.
        assert types[-1] == "disconnected" and types.count("call_ended") == 1, types
        assert set(types[types.index("call_ended") + 1:-1]) <= {"participant_left", "track_unpublished"}, types
        ended = seen.of("call_ended")[0]
        assert ended.call_cid.startswith("default:join-") and ended.ended_at == ended_at[0]
        gone = seen.of("disconnected")[0]
        assert (gone.code, gone.ws_close_code, gone.ws_close_reason) == (
            hibiki.SignalingErrorCode.CLOSE_SUCCEEDED, 1000, "CALL-ENDED")

    async def join_again() -> None:
        client = AsyncClient(api_key=KEY, api_secret=SECRET, base_url=server.url)
        cid = alice.of("call_ended")[0].call_cid
        call_type, call_id = cid.split(":")
        with pytest.raises(hibiki.ConnectionError) as refused:
            async with client.video.rtc_call(call_type, call_id).join("carol"):
                pass
        assert refused.value.ws_close_code == 4403 and "call ended" in refused.value.reason

    run(join_again(), timeout=30)


def test_sync_client_works_too(server_factory: Callable[..., ServerProcess]) -> None:
    """A blocking Client: its REST calls run in a thread, the join is the same."""
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)

    async def scenario() -> None:
        with Client(api_key=KEY, api_secret=SECRET, base_url=server.url) as client:
            rtc = client.video.rtc_call("default", new_call_id())
            async with rtc.join("alice", audio=False, video=False) as alice:
                assert alice.connection.connected and alice.connection_id
                stored = await asyncio.to_thread(client.video.call(rtc.type, rtc.id).get)
                assert stored.call.created_by_id == "alice"
                assert [p.user_id for p in stored.call.participants] == ["alice"]

    run(scenario(), timeout=30)


def test_tokens_decide_who_joins(server_factory: Callable[..., ServerProcess]) -> None:
    """On a server with a secret: no token is refused; a server-made token (``token=``) or the client's own joins."""
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)

    async def scenario() -> None:
        admin = AsyncClient(api_key=KEY, api_secret=SECRET, base_url=server.url)
        rtc = admin.video.rtc_call("default", new_call_id())
        await admin.video.call(rtc.type, rtc.id).get_or_create()
        # A client without the secret sends no token: the server refuses it.
        anonymous = AsyncClient(base_url=server.url).video.rtc_call(rtc.type, rtc.id)
        with pytest.raises(hibiki.ConnectionError) as refused:
            async with anonymous.join("mallory", create=False, audio=False, video=False):
                pass
        assert refused.value.ws_close_code == 4401
        # A token made by the server for this call (as a backend hands it to an app) joins.
        made = await admin.request_token("carol", call_cids=[rtc.cid])
        async with anonymous.join("carol", create=False, audio=False, video=False, token=made.token) as carol:
            assert carol.connection.client_id == "carol"
            # The client's own token (it has the secret) joins too; carol sees dave arrive.
            async with rtc.join("dave", create=False, audio=False, video=False) as dave:
                assert {p.user_id for p in dave.participants.values()} == {"carol"}
                seen = Seen()
                reader = asyncio.create_task(collect(carol, seen))
                await seen.wait(lambda: bool(seen.of("participant_joined")), "dave at carol")
                assert seen.of("participant_joined")[0].user_id == "dave"
                assert seen.of("participant_joined")[0].connection_id == dave.connection_id
                assert seen.of("participant_joined")[0].role == "sendrecv"
        await asyncio.wait_for(reader, 10)
        # A token for another call is refused.
        other = await admin.request_token("erin", call_cids=["default:another-call"])
        with pytest.raises(hibiki.ConnectionError) as wrong_call:
            async with anonymous.join("erin", create=False, audio=False, video=False, token=other.token):
                pass
        assert wrong_call.value.ws_close_code in (4401, 4403)

    run(scenario(), timeout=60)


# -- data and pushes ---------------------------------------------------------------------------------


def test_data_messages_both_ways_and_custom_events(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)

    async def scenario() -> None:
        client = AsyncClient(api_key=KEY, api_secret=SECRET, base_url=server.url)
        rtc = client.video.rtc_call("default", new_call_id())
        seen = {"alice": Seen(), "bob": Seen()}
        async with rtc.join("alice", audio=False, video=False) as alice, \
                rtc.join("bob", audio=False, video=False) as bob:
            readers = [asyncio.create_task(collect(c, seen[c.user_id])) for c in (alice, bob)]
            await alice.send_data(b"hello bob")
            await bob.send_data("hello alice")  # str goes as UTF-8
            for user, text, sender in (("bob", b"hello bob", alice), ("alice", b"hello alice", bob)):
                await seen[user].wait(has_event(seen[user], "data_message"), f"a message at {user}")
                message = seen[user].of("data_message")[0]
                assert message.data == text and message.label == "#call"
                assert message.participant == sender_participant(sender, seen[user])
            # A push to the whole call reaches both, one to a connection only that one.
            await client.video.call(rtc.type, rtc.id).send_message({"topic": "all"})
            await client.video.call(rtc.type, rtc.id).send_message({"topic": "bob only"}, bob.connection_id)
            await seen["bob"].wait(lambda: len(seen["bob"].of("custom_event")) == 2, "two pushes at bob")
            await seen["alice"].wait(lambda: len(seen["alice"].of("custom_event")) == 1, "a push at alice")
            assert [e.data for e in seen["bob"].of("custom_event")] == [{"topic": "all"}, {"topic": "bob only"}]
            assert seen["alice"].of("custom_event") == [CustomEvent({"topic": "all"})]
        await asyncio.wait_for(asyncio.gather(*readers), 10)

    run(scenario(), timeout=60)


def has_event(seen: Seen, kind: str) -> Callable[[], bool]:
    """A predicate for :meth:`Seen.wait`: an event of ``kind`` arrived."""
    return lambda: bool(seen.of(kind))


def sender_participant(sender: CallConnection, seen: Seen) -> Participant:
    """The Participant the receiver was told about for ``sender``."""
    return next(p for p in seen.of("participant_joined") if p.connection_id == sender.connection_id)


# -- add_tracks / attach_sources errors --------------------------------------------------------------


def test_add_tracks_refuses_what_cannot_be_sent(server: ServerProcess) -> None:
    async def scenario() -> None:
        sdk = hibiki.Hibiki()
        client = AsyncClient(base_url=server.url)
        rtc = client.video.rtc_call("default", new_call_id())
        async with rtc.join("viewer", role="recvonly", create=False) as viewer:
            with pytest.raises(ValueError, match="recvonly"):
                await viewer.add_tracks(audio=sdk.create_audio_source(1, RATE))
        async with rtc.join("talker", video=False, create=False) as talker:
            with pytest.raises(ValueError, match="no video m-line"):
                await talker.add_tracks(video=sdk.create_video_source())
            with pytest.raises(TypeError, match="AudioSource"):
                await talker.add_tracks(audio=sdk.create_video_source())  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="needs an audio or a video source"):
                await talker.add_tracks()
            mic = sdk.create_audio_source(1, RATE)
            await talker.add_tracks(audio=mic)
            await talker.add_tracks(audio=mic)  # the same source again: nothing to do
            assert mic.attached
            with pytest.raises(ValueError, match="already sends audio"):
                await talker.add_tracks(audio=sdk.create_audio_source(1, RATE))
            await talker.leave()
            assert not mic.attached  # detached at close
            with pytest.raises(RuntimeError, match="closed"):
                await talker.add_tracks(audio=sdk.create_audio_source(1, RATE))
        # Before connecting, the plain Connection refuses too.
        conn = sdk.create_connection([server.signaling_url], "sendrecv", "not-connected")
        with pytest.raises(RuntimeError, match="not connected|new"):
            conn.attach_sources(audio=sdk.create_audio_source(1, RATE))

    run(scenario(), timeout=60)


# -- a slow reader ------------------------------------------------------------------------------------


def test_slow_reader_keeps_a_bounded_queue_and_every_control_event(server: ServerProcess) -> None:
    """Not reading for a while drops the oldest frames per track, never the other events."""

    async def scenario() -> None:
        sdk = hibiki.Hibiki()
        client = AsyncClient(base_url=server.url)
        rtc = client.video.rtc_call("default", new_call_id())
        mic, camera = sdk.create_audio_source(1, RATE), sdk.create_video_source()
        async with rtc.join("reader", create=False, frame_queue_size=5) as reader:
            async with rtc.join("alice", create=False) as alice:
                await alice.add_tracks(audio=mic, video=camera)
                with feeding(mic, camera, "alice"):
                    deadline = time.monotonic() + 20
                    # Nobody reads `reader` meanwhile: wait until frames were dropped for both tracks.
                    while not (len(reader._queue.dropped) == 2 and reader.frames_dropped > 20):
                        assert time.monotonic() < deadline, f"no drops: {reader._queue.dropped}"
                        await asyncio.sleep(0.1)
                    queued = {t: len(q) for t, q in reader._queue._media.items()}
                    assert queued and all(n <= 5 for n in queued.values()), queued
            events = [e async for e in reader_until_disconnected(reader)]
        types = [e.type for e in events]
        # Every control event is there, in order, whatever was dropped.
        control = [t for t in types if t != "rtc_packet"]
        assert control[:1] == ["participant_joined"], control
        assert sorted(control[1:3]) == ["track_published", "track_published"], control
        assert control[-1] == "disconnected" and "participant_left" in control, control
        assert types.count("rtc_packet") >= 5
        assert reader.frames_dropped > 20
        video_tracks = [e.track_published.track for e in events if e.track_published and e.track_published.kind == "video"]
        assert reader.frames_dropped_by_track(video_tracks[0]) > 0

    run(scenario(), timeout=60)


def test_receive_frames_off_leaves_reading_to_the_user(server: ServerProcess) -> None:
    """With receive_frames=False no rtc_packet comes; the announced track is read directly."""

    async def scenario() -> None:
        sdk = hibiki.Hibiki()
        client = AsyncClient(base_url=server.url)
        rtc = client.video.rtc_call("default", new_call_id())
        camera = sdk.create_video_source()
        async with rtc.join("alice", create=False, audio=False) as alice:
            await alice.add_tracks(video=camera)
            with feeding(None, camera, "alice"):
                async with rtc.join("bob", create=False, audio=False, receive_frames=False) as bob:
                    seen = Seen()
                    reader = asyncio.create_task(collect(bob, seen))
                    await seen.wait(lambda: bool(seen.of("track_published")), "alice's track at bob")
                    published = seen.of("track_published")[0]
                    assert (published.kind, published.participant.user_id) == ("video", "alice")
                    frame = await published.track.recv(timeout=10)
                    assert read_counter(frame.data()) in range(100_000, 200_000)
            await asyncio.wait_for(reader, 10)
        assert seen.packets == 0 and seen.types()[-1] == "disconnected"
        # The stream ended: iterating again ends at once instead of waiting forever.
        assert [e async for e in bob] == []

    run(scenario(), timeout=60)


async def reader_until_disconnected(connection: CallConnection) -> Any:
    """The remaining events of ``connection``; leaves first so that the stream ends."""
    await connection.leave()
    async for event in connection:
        yield event


# -- units ------------------------------------------------------------------------------------------------


def test_call_event_carries_exactly_one_field() -> None:
    someone = Participant("alice", "C1", "sendrecv")
    event = CallEvent(participant_joined=someone)
    assert event.type == "participant_joined" and event.participant_joined is someone
    assert event.participant_left is None and event.rtc_packet is None
    with pytest.raises(ValueError, match="exactly one"):
        CallEvent()
    with pytest.raises(ValueError, match="exactly one"):
        CallEvent(participant_joined=someone, participant_left=someone)


def test_event_queue_orders_and_bounds_frames_per_track() -> None:
    class FakeTrack:
        def __init__(self, kind: str) -> None:
            self.kind, self.stream_id, self.ended = kind, "C1", False

    async def scenario() -> None:
        queue = _EventQueue(frame_queue_size=2)
        audio, video = FakeTrack("audio"), FakeTrack("video")
        someone = Participant("alice", "C1")

        def frame(track: Any, n: int) -> CallEvent:
            return CallEvent(custom_event=CustomEvent((track.kind, n)))  # stands for a packet

        queue.put(CallEvent(participant_joined=someone))
        for n in range(5):
            queue.put_frame(audio, frame(audio, n))  # type: ignore[arg-type]
        queue.put_frame(video, frame(video, 0))  # type: ignore[arg-type]
        queue.put(CallEvent(participant_left=someone))
        audio.ended = True
        got = [await asyncio.wait_for(queue.get(), 1) for _ in range(5)]
        assert [e.type for e in got] == ["participant_joined", "custom_event", "custom_event", "custom_event",
                                         "participant_left"]
        assert [e.custom_event.data for e in got[1:4]] == [("audio", 3), ("audio", 4), ("video", 0)]  # type: ignore[union-attr]
        assert queue.dropped == {audio: 3}
        assert audio not in queue._media  # an ended, drained track is forgotten
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), 0.05)

    run(scenario(), timeout=10)


def test_join_checks_its_arguments() -> None:
    rtc = RtcCall(object(), "default", "x")  # arguments are checked before the client is used
    with pytest.raises(ValueError, match="user_id"):
        rtc.join("")
    with pytest.raises(ValueError, match="messaging_label"):
        rtc.join("alice", messaging_label="chat")
    with pytest.raises(ValueError, match="frame_queue_size"):
        rtc.join("alice", frame_queue_size=0)


# -- the README's example, run as written ----------------------------------------------------------


def readme_example() -> str:
    """The Python block between the ``call-example`` markers of README.md."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- call-example:begin -->", 1)[1].split("<!-- call-example:end -->", 1)[0]
    return block.split("```python", 1)[1].rsplit("```", 1)[0]


def test_readme_example(server_factory: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]) -> None:
    """README's ``attend``, run as written: alice and bob see each other join and get each other's
    media (content checked); carol comes and goes (both see her participant_left); ending the call
    gives both call_ended, then disconnected."""
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)
    namespace: dict[str, Any] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    # The example's client points at the README's address: point it at this server.
    namespace["client"] = client = AsyncClient(api_key=KEY, api_secret=SECRET, base_url=server.url)
    attend = namespace["attend"]
    sdk = hibiki.Hibiki()
    users = (*USERS, "carol")
    sources = {u: (sdk.create_audio_source(1, RATE), sdk.create_video_source()) for u in users}
    seen = {u: Seen() for u in users}

    def start(user: str) -> asyncio.Task[None]:
        return asyncio.create_task(attend(user, *sources[user], lambda e: record(seen[user], e)))

    async def scenario() -> None:
        with feeding(*sources["alice"], "alice"), feeding(*sources["bob"], "bob"):
            alice, bob = start("alice"), start("bob")
            await seen["alice"].wait(lambda: media_arrived(seen["alice"], "bob"), "bob's media at alice", 30)
            await seen["bob"].wait(lambda: media_arrived(seen["bob"], "alice"), "alice's media at bob", 30)
            for user, other in (("alice", "bob"), ("bob", "alice")):
                assert [p.user_id for p in seen[user].of("participant_joined")] == [other]
                check_media_from(seen[user], other)
            carol = start("carol")
            for user in USERS:
                await seen[user].wait(lambda u=user: len(seen[u].of("participant_joined")) == 2, "carol's join")
            carol.cancel()  # carol leaves the call
            await asyncio.gather(carol, return_exceptions=True)
            for user in USERS:
                await seen[user].wait(lambda u=user: bool(seen[u].of("participant_left")), "carol's leave")
                assert [p.user_id for p in seen[user].of("participant_left")] == ["carol"]
            await client.video.call("default", "standup").end()
            await asyncio.wait_for(asyncio.gather(alice, bob), 15)
        for user in USERS:
            types = seen[user].types()
            assert types[-1] == "disconnected" and types.count("call_ended") == 1, types
        await client.aclose()

    run(scenario(), timeout=90)
    out = capsys.readouterr().out
    assert "alice sees bob join" in out and "bob sees alice join" in out
    assert "alice sees carol leave" in out and "bob sees carol leave" in out
    assert "alice sees the call end" in out and "bob sees the call end" in out
