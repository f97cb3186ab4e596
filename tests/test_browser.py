"""The web page served by ``hibiki serve``, in a real headless Chromium, against the Hibiki SDK.

Playwright drives Debian's ``chromium`` with its fake camera and microphone
(``--use-fake-device-for-media-stream``): a 640x480 moving picture and a
400 Hz beep every 500 ms (Chromium's ``FakeAudioInputStream``). The page
speaks Sora signaling with the browser's own RTCPeerConnection; the other
side of every test is a Hibiki SDK client in the same event loop.

Checked, each with a deadline:

* the browser publishes (VP8 and H.264): the SDK receives 640x480 frames
  that change over time and the beeps (periodic bursts at ~400 Hz); the
  browser leaves and the SDK sees its tracks removed and its
  ``connection.destroyed``;
* the SDK publishes the counter test pattern; the browser decodes it
  (``framesDecoded`` rising) and the picture in its ``<video>`` (read back
  through a canvas) carries a readable counter and that frame's colour bars;
* ``#chat`` messages both ways, byte for byte (UTF-8).

Screenshots go to the test's tmp_path and the latest ones to
``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hibiki
import numpy as np
import pytest
from conftest import REPO, ServerProcess, new_channel_id, run
from hibiki.media.testsrc import pattern_intact, read_counter, test_pattern

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (apt-get install chromium)")
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = REPO / "test-artifacts"
FPS = 30


# -- helpers -----------------------------------------------------------------------------


@asynccontextmanager
async def browser_page(server: ServerProcess, query: str = "") -> AsyncIterator[Any]:
    """A page of ``hibiki serve``'s web client in headless Chromium; console errors fail the test."""
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{server.url}/{query}")
            await page.wait_for_function("window.hibiki !== undefined", timeout=5000)
            yield page
            assert not errors, errors
        finally:
            await browser.close()


async def screenshot(page: Any, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    await page.screenshot(path=str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


async def wait_js(page: Any, expression: str, timeout: float = 10.0, arg: Any = None) -> Any:
    """Wait until ``expression`` (a JS function body's value) is truthy; return it."""
    handle = await page.wait_for_function(expression, arg=arg, timeout=timeout * 1000)
    return await handle.json_value()


class Events:
    """Collects a Hibiki connection's events in the background."""

    def __init__(self, conn: hibiki.Connection) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._collect(conn))

    async def _collect(self, conn: hibiki.Connection) -> None:
        async for event in conn:
            self.items.append(event)
            self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.items:
                if predicate(e):
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got {self.items!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    def close(self) -> None:
        self._task.cancel()


def _frame_bgr(grab: dict[str, Any]) -> np.ndarray:
    rgba = np.frombuffer(base64.b64decode(grab["rgba"]), np.uint8).reshape(grab["height"], grab["width"], 4)
    return np.ascontiguousarray(rgba[:, :, 2::-1])


def _beep_onsets(pcm: np.ndarray, rate: int) -> tuple[list[float], np.ndarray]:
    """Onset times (s) of energy bursts in mono ``pcm``, and the samples inside bursts.

    A burst starts only after 100 ms of quiet: a dip inside a beep (a packet
    concealed on a busy machine) does not make a second onset.
    """
    win = rate // 200  # 5 ms
    quiet_before = 20  # windows: 100 ms
    n = len(pcm) // win
    frames = pcm[: n * win].astype(np.float64).reshape(n, win)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = rms > max(300.0, 0.3 * float(rms.max()))
    onsets = [i * win / rate for i in range(quiet_before, n) if loud[i] and not loud[i - quiet_before:i].any()]
    burst = frames[loud].ravel()
    return onsets, burst


def _dominant(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    spectrum[0] = 0
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(spectrum.argmax())])


# -- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_browser_publishes_camera_and_microphone_then_leaves(server: ServerProcess, tmp_path: Path, codec: str) -> None:
    channel = new_channel_id()

    async def main() -> None:
        async with hibiki.connect(server.signaling_url, role="recvonly", channel_id=channel) as sub:
            events = Events(sub)
            query = f"?channel={channel}&autojoin=1&video={codec}"
            async with browser_page(server, query) as page:
                await wait_js(page, "window.hibiki.state === 'connected'", 15)
                browser_cid = await page.evaluate("window.hibiki.connectionId")
                video = (await events.wait_for(
                    lambda e: isinstance(e, hibiki.events.TrackAdded) and e.track.kind == "video", 10,
                    "the browser's video")).track
                audio = (await events.wait_for(
                    lambda e: isinstance(e, hibiki.events.TrackAdded) and e.track.kind == "audio", 10,
                    "the browser's audio")).track
                assert video.stream_id == browser_cid and audio.stream_id == browser_cid

                # Video: 640x480 (the fake camera's size) and moving.
                frames = []
                end = time.monotonic() + 2.5
                while time.monotonic() < end:
                    frames.append(await video.recv(timeout=5.0))
                assert len(frames) > 20, len(frames)
                assert {(f.width, f.height) for f in frames[-10:]} == {(640, 480)}
                first, last = frames[-30].data().astype(np.int16), frames[-1].data().astype(np.int16)
                assert float(np.abs(first - last).mean()) > 2.0, "the picture does not change"

                # Audio: the fake microphone's beep, every 500 ms at 400 Hz.
                chunks = []
                end = time.monotonic() + 3.0
                while time.monotonic() < end:
                    chunks.append(await audio.recv(timeout=5.0))
                rate = chunks[0].sample_rate
                pcm = np.concatenate([c.data()[:, 0] for c in chunks])
                onsets, burst = _beep_onsets(pcm, rate)
                assert len(onsets) >= 4, onsets
                gaps = np.diff(onsets)
                assert np.all(np.abs(gaps - 0.5) < 0.1), gaps
                assert abs(_dominant(burst, rate) - 400) < 40, _dominant(burst, rate)

                # The browser sent the codec it was asked for; the page shows the tile stats.
                stats = await page.evaluate("window.hibiki.stats()")
                sent = [s for s in stats["outbound"] if s["kind"] == "video"]
                assert sent and sent[0]["codec"].lower() == f"video/{codec}", sent
                await wait_js(page, r"/\d+ kbps/.test(document.querySelector('.tile.local .stats').textContent)", 5)
                await screenshot(page, tmp_path, f"publish-{codec}")

                # Leave: the SDK sees the tracks go and the connection destroyed.
                await page.evaluate("window.hibiki.leave()")
                assert await page.evaluate("window.hibiki.state") == "closed"
                removed = await events.wait_for(
                    lambda e: isinstance(e, hibiki.events.TrackRemoved) and e.track.kind == "video", 10,
                    "the video track removed")
                assert removed.track.stream_id == browser_cid
                await events.wait_for(
                    lambda e: isinstance(e, hibiki.events.TrackRemoved) and e.track.kind == "audio", 10,
                    "the audio track removed")
                await events.wait_for(
                    lambda e: isinstance(e, hibiki.events.Notify) and e.event_type == "connection.destroyed"
                    and e.connection_id == browser_cid, 10, "connection.destroyed")
                assert await page.evaluate("window.hibiki.tiles()") == []
            events.close()

    run(main(), timeout=60)


def test_browser_shows_the_sdk_test_pattern(server: ServerProcess, tmp_path: Path) -> None:
    channel = new_channel_id()
    source = hibiki.VideoSource()
    frames = [test_pattern(i, 640, 480) for i in range(60)]

    async def feed(stop: asyncio.Event) -> None:
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            source.on_captured(frames[i % 60])
            i += 1
            await asyncio.sleep(max(0.0, start + i / FPS - time.monotonic()))

    async def main() -> None:
        stop = asyncio.Event()
        feeder = asyncio.create_task(feed(stop))
        try:
            async with (
                hibiki.connect(server.signaling_url, role="sendonly", channel_id=channel,
                               video_source=source, client_id="python-pattern") as pub,
                browser_page(server, f"?channel={channel}&role=recvonly&autojoin=1") as page,
            ):
                await wait_js(page, "window.hibiki.state === 'connected'", 15)
                pub_cid = pub.connection_id
                await wait_js(page, "(cid) => window.hibiki.tiles().includes(cid)", 10, pub_cid)
                deadline = time.monotonic() + 10
                while True:
                    stats = await page.evaluate("window.hibiki.stats()")
                    decoded = next((s for s in stats["inbound"] if s["kind"] == "video"), None)
                    if decoded and (decoded["framesDecoded"] or 0) > 10:
                        break
                    assert time.monotonic() < deadline, f"the browser decodes no video: {stats}"
                    await asyncio.sleep(0.1)
                assert decoded["codec"] == "video/VP8", decoded
                await asyncio.sleep(0.5)  # a second reading must be higher (decoding goes on)
                later = await page.evaluate("window.hibiki.stats()")
                later_video = next(s for s in later["inbound"] if s["kind"] == "video")
                assert later_video["framesDecoded"] > decoded["framesDecoded"], (decoded, later_video)
                assert (later_video["frameWidth"], later_video["frameHeight"]) == (640, 480)

                # What the <video> shows is the pattern: a readable counter and its bars.
                good = []
                deadline = time.monotonic() + 10
                while len(good) < 3:
                    assert time.monotonic() < deadline, f"no clean pattern frame in the <video>: {good}"
                    grab = await page.evaluate("(cid) => window.hibiki.grabFrame(cid)", pub_cid)
                    if grab is None:
                        await asyncio.sleep(0.05)
                        continue
                    assert (grab["width"], grab["height"]) == (640, 480)
                    bgr = _frame_bgr(grab)
                    counter = read_counter(bgr)
                    if counter is not None and pattern_intact(bgr, counter) and counter not in good:
                        good.append(counter)
                    await asyncio.sleep(0.1)
                # The tile is labelled with the publisher's client_id and connection_id.
                label = await page.text_content(f".tile[data-stream='{pub_cid}'] .label")
                assert "python-pattern" in label and pub_cid in label, label
                await wait_js(page, f"document.querySelector(\".tile[data-stream='{pub_cid}'] .stats\")"
                              r".textContent.match(/\d+ kbps · \d+ fps/)", 5)
                await screenshot(page, tmp_path, "sdk-pattern")
                await page.evaluate("window.hibiki.leave()")
        finally:
            stop.set()
            await feeder

    run(main(), timeout=60)


def test_chat_between_browser_and_sdk(server: ServerProcess, tmp_path: Path) -> None:
    channel = new_channel_id()

    async def main() -> None:
        async with hibiki.connect(server.signaling_url, role="recvonly", channel_id=channel, client_id="py-chat",
                                  data_channel_signaling=True,
                                  data_channels=[{"label": "#chat", "direction": "sendrecv"}]) as py:
            events = Events(py)
            await events.wait_for(lambda e: isinstance(e, hibiki.events.DataChannelOpen) and e.label == "#chat",
                                  10, "#chat open on the SDK side")
            async with browser_page(server, f"?channel={channel}&autojoin=1") as page:
                await wait_js(page, "window.hibiki.state === 'connected'", 15)
                await wait_js(page, "window.hibiki._state.dcs['#chat'] && "
                              "window.hibiki._state.dcs['#chat'].readyState === 'open'", 10)
                browser_cid = await page.evaluate("window.hibiki.connectionId")

                text = "こんにちは from the browser ✓"
                await page.evaluate("(t) => window.hibiki.sendChat(t)", text)
                got = await events.wait_for(lambda e: isinstance(e, hibiki.events.Message) and e.label == "#chat",
                                            10, "the browser's chat message")
                assert got.payload == text.encode()

                reply = "héllo from Python 🐍"
                await py.send_message("#chat", reply.encode())
                log = await wait_js(page, "window.hibiki.chatLog.length >= 2 && window.hibiki.chatLog", 10)
                assert [(m["text"], m["mine"]) for m in log] == [(text, True), (reply, False)]
                assert log[1]["from"] == py.connection_id  # the page asked for the sender header
                assert log[0]["from"] == browser_cid
                shown = await page.inner_text("#chat-log")
                assert reply in shown and text in shown
                await page.fill("#chat-input", "typed in the box")
                await page.click("#chat-send")
                typed = await events.wait_for(
                    lambda e: isinstance(e, hibiki.events.Message) and e.payload == b"typed in the box", 10,
                    "the chat box's message")
                assert typed.label == "#chat"
                await wait_js(page, r"/\d+ kbps/.test(document.querySelector('.tile.local .stats').textContent)", 5)
                await screenshot(page, tmp_path, "chat")
                await page.evaluate("window.hibiki.leave()")
            events.close()

    run(main(), timeout=60)


def test_two_browsers_see_each_other_and_the_tile_goes_when_one_leaves(server: ServerProcess, tmp_path: Path) -> None:
    channel = new_channel_id()

    async def main() -> None:
        async with (
            browser_page(server, f"?channel={channel}&autojoin=1&client_id=alice") as alice,
            browser_page(server, f"?channel={channel}&autojoin=1&client_id=bob") as bob,
        ):
            for page in (alice, bob):
                await wait_js(page, "window.hibiki.state === 'connected'", 15)
            alice_cid = await alice.evaluate("window.hibiki.connectionId")
            bob_cid = await bob.evaluate("window.hibiki.connectionId")
            # Each shows its own preview and the other's tile, labelled and playing.
            for page, other, name in ((alice, bob_cid, "bob"), (bob, alice_cid, "alice")):
                await wait_js(page, "(cid) => window.hibiki.tiles().length === 2 && "
                              "window.hibiki.tiles().includes(cid)", 10, other)
                await wait_js(page, f"document.querySelector(\".tile[data-stream='{other}'] video\").videoWidth === 640",
                              10)
                label = await page.text_content(f".tile[data-stream='{other}'] .label")
                assert name in label and other in label, label
                await wait_js(page, f"document.querySelector(\".tile[data-stream='{other}']\").dataset.audioMuted"
                              " === 'false'", 10)
            await wait_js(alice, r"/\d+ kbps · \d+ fps/.test("
                          f"document.querySelector(\".tile[data-stream='{bob_cid}'] .stats\").textContent)", 5)
            await screenshot(alice, tmp_path, "two-browsers")
            await bob.evaluate("window.hibiki.leave()")
            await wait_js(alice, "(cid) => !window.hibiki.tiles().includes(cid)", 10, bob_cid)
            assert await alice.evaluate("window.hibiki.tiles()") == ["local"]
            await alice.evaluate("window.hibiki.leave()")

    run(main(), timeout=60)


def test_browser_joins_a_call_with_a_user_token_and_sees_it_end(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """With an API secret the page joins with ``?token=`` (a user token), as that user; without one it
    is refused; ending the call over REST shows on the page and closes it."""
    from hibiki.api import AsyncClient

    secret, key = "browser-secret-0123456789abcdef0123456789", "browser-key"
    server = server_factory("--api-secret", secret, "--api-key", key)
    client = AsyncClient(api_key=key, api_secret=secret, base_url=server.url)
    call_id = new_channel_id()
    cid = f"default:{call_id}"

    async def main() -> None:
        await client.video.call("default", call_id).get_or_create()
        token = client.create_token("dana", call_cids=[cid])
        async with browser_page(server, f"?channel={cid}&autojoin=1&token={token}") as page:
            await wait_js(page, "window.hibiki.state === 'connected'", 15)
            assert await page.evaluate("window.hibiki.clientId") == "dana"
            listed = await client.video.call("default", call_id).list_connections()
            assert [c.user_id for c in listed.connections] == ["dana"]
            await client.video.call("default", call_id).end()
            await wait_js(page, "window.hibiki.state !== 'connected'", 10)
            log = await page.text_content("#chat-log")
            assert "the call was ended" in (log or ""), log
        async with browser_page(server, f"?channel={cid}&autojoin=1") as page:
            await wait_js(page, "window.hibiki.state === 'error'", 15)
            assert "4401" in (await page.evaluate("window.hibiki.lastError") or "")
        await client.aclose()

    run(main(), timeout=60)


def test_browser_publishes_simulcast(server: ServerProcess, tmp_path: Path) -> None:
    """Chromium applies the offer's encodings (as sora-js-sdk does) and sends r0..r2; receivers pick layers."""
    channel = new_channel_id()

    async def widths(conn: hibiki.Connection, want: Any, what: str) -> set[int]:
        events = Events(conn)
        video = (await events.wait_for(
            lambda e: isinstance(e, hibiki.events.TrackAdded) and e.track.kind == "video", 15, what)).track
        seen: set[int] = set()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            frame = await video.recv(timeout=5.0)
            seen.add(frame.width)
            if want(frame.width):
                break
        events.close()
        return seen

    async def main() -> None:
        query = f"?channel={channel}&autojoin=1&video=vp8&simulcast=1&hd=1"
        async with browser_page(server, query) as page:
            await wait_js(page, "window.hibiki.state === 'connected'", 15)
            async with (
                hibiki.connect(server.signaling_url, role="recvonly", channel_id=channel, audio=False,
                               simulcast_rid="r0") as low,
                hibiki.connect(server.signaling_url, role="recvonly", channel_id=channel, audio=False,
                               simulcast_rid="r2") as high,
            ):
                low_widths = await widths(low, lambda w: w == 320, "the browser's video at r0")
                high_widths = await widths(high, lambda w: w >= 640, "the browser's video at r2")
                assert 320 in low_widths and max(low_widths) == 320, low_widths
                assert max(high_widths) >= 640, high_widths
            stats = await page.evaluate("window.hibiki.stats()")
            rids = sorted(s.get("rid") or "" for s in stats["outbound"] if s["kind"] == "video")
            assert rids == ["r0", "r1", "r2"], stats["outbound"]
            await screenshot(page, tmp_path, "simulcast")

    run(main(), timeout=90)
