"""``hibiki.compat.sora_sdk``: sora-sdk's whole public surface, and its behaviour, over the Hibiki SDK.

Three kinds of checks:

* **Surface**: the installed sora-sdk's type stub (``sora_sdk_ext.pyi``) and
  its ``__init__.py`` are parsed with :mod:`ast` (sora-sdk is not imported
  here) and every class, function, method, property, nested class and enum
  member must exist in ``hibiki.compat.sora_sdk`` with the same parameter
  names, kinds (positional-only) and defaults; overloads must all bind;
  enums must have the same members and values in the same order.
* **Parity**: a script exercising the parts that need no server (enums,
  codec preferences, audio frame pickling, constructors, sources) runs once
  under the real sora-sdk and once under the compat module, each in its own
  subprocess, and the outputs must be equal.
* **Behaviour** against a real ``hibiki serve``: callbacks with sora-sdk's
  types, sinks, ``get_stats()``, ``connect()`` returning at once,
  ``disconnect()`` returning after ``on_disconnect``.

Every wait has a deadline.
"""

from __future__ import annotations

import ast
import enum
import gc
import importlib.util
import inspect
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import hibiki.compat.sora_sdk as compat
import numpy as np
import pytest
from conftest import PYTHON_SRC, free_tcp_port, new_channel_id, wait_until
from hibiki.media.testsrc import dominant_frequency, read_counter, test_pattern, tone

# -- the stub ---------------------------------------------------------------------------------


def _sora_sdk_dir() -> Path | None:
    # find_spec locates the package without importing it (no libwebrtc in this process).
    spec = importlib.util.find_spec("sora_sdk")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


SORA_DIR = _sora_sdk_dir()
needs_sora_sdk = pytest.mark.skipif(SORA_DIR is None, reason="sora-sdk is not installed (pip install sora-sdk==2025.4.0)")


@dataclass
class StubClass:
    name: str
    qualname: str
    bases: list[str]
    is_enum: bool = False
    members: list[tuple[str, int]] = field(default_factory=list)
    methods: dict[str, list[ast.FunctionDef]] = field(default_factory=dict)
    overloaded: set[str] = field(default_factory=set)
    properties: dict[str, ast.FunctionDef | None] = field(default_factory=dict)
    """Property name -> its setter's def (None: read-only)."""
    nested: dict[str, StubClass] = field(default_factory=dict)


@dataclass
class Stub:
    classes: dict[str, StubClass]
    functions: dict[str, list[ast.FunctionDef]]
    overloaded: set[str]


def _decorators(fn: ast.FunctionDef) -> list[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


def _parse_class(node: ast.ClassDef, prefix: str = "") -> StubClass:
    cls = StubClass(node.name, prefix + node.name, [ast.unparse(b) for b in node.bases])
    cls.is_enum = any(b in ("enum.IntEnum", "IntEnum", "enum.Enum") for b in cls.bases)
    for item in node.body:
        if isinstance(item, ast.ClassDef):
            cls.nested[item.name] = _parse_class(item, cls.qualname + ".")
        elif isinstance(item, ast.Assign) and cls.is_enum:
            (target,) = item.targets
            assert isinstance(target, ast.Name)
            cls.members.append((target.id, ast.literal_eval(item.value)))
        elif isinstance(item, ast.FunctionDef):
            decorators = _decorators(item)
            if "property" in decorators:
                cls.properties.setdefault(item.name, None)
            elif f"{item.name}.setter" in decorators:
                cls.properties[item.name] = item
            else:
                cls.methods.setdefault(item.name, []).append(item)
                if "overload" in decorators:
                    cls.overloaded.add(item.name)
    return cls


def load_stub() -> Stub:
    """sora-sdk's public surface: the extension's .pyi plus the Python wrappers of __init__.py."""
    assert SORA_DIR is not None
    classes: dict[str, StubClass] = {}
    functions: dict[str, list[ast.FunctionDef]] = {}
    overloaded: set[str] = set()
    for path in (SORA_DIR / "sora_sdk_ext.pyi", SORA_DIR / "__init__.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = _parse_class(node)
            elif isinstance(node, ast.FunctionDef) and path.suffix == ".pyi":
                functions.setdefault(node.name, []).append(node)
                if "overload" in _decorators(node):
                    overloaded.add(node.name)
    return Stub(classes, functions, overloaded)


# -- signature comparison ----------------------------------------------------------------------

Param = tuple[str, str, Any]  # (name, kind, default or "<required>")
REQUIRED = "<required>"


def stub_params(fn: ast.FunctionDef) -> list[Param]:
    args = fn.args
    positional = [(a, "POSITIONAL_ONLY") for a in args.posonlyargs] + [
        (a, "POSITIONAL_OR_KEYWORD") for a in args.args
    ]
    defaults: list[Any] = [REQUIRED] * (len(positional) - len(args.defaults)) + [
        ast.literal_eval(d) for d in args.defaults
    ]
    params = [(a.arg, kind, d) for (a, kind), d in zip(positional, defaults, strict=True)]
    if args.vararg is not None:
        params.append((args.vararg.arg, "VAR_POSITIONAL", REQUIRED))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append((a.arg, "KEYWORD_ONLY", REQUIRED if d is None else ast.literal_eval(d)))
    if args.kwarg is not None:
        params.append((args.kwarg.arg, "VAR_KEYWORD", REQUIRED))
    return params


def our_params(fn: Any) -> list[Param]:
    sig = inspect.signature(fn)
    return [
        (p.name, p.kind.name, REQUIRED if p.default is inspect.Parameter.empty else p.default)
        for p in sig.parameters.values()
    ]


def overload_binds(fn: Any, overload: ast.FunctionDef) -> list[str]:
    """Problems binding every way of calling ``overload`` to our ``fn`` (empty: all bind)."""
    sig = inspect.signature(fn)
    params = stub_params(overload)
    problems = []
    required = [p for p in params if p[2] is REQUIRED]
    for chosen in (params, required):
        positional = [object() for _ in chosen]
        by_keyword_pos = [object() for p in chosen if p[1] == "POSITIONAL_ONLY"]
        by_keyword = {p[0]: object() for p in chosen if p[1] != "POSITIONAL_ONLY"}
        for args, kwargs in ((positional, {}), (by_keyword_pos, by_keyword)):
            try:
                sig.bind(*args, **kwargs)
            except TypeError as exc:
                problems.append(f"{[p[0] for p in chosen]} ({'keywords' if kwargs else 'positional'}): {exc}")
    return problems


def compare_function(where: str, ours: Any, defs: list[ast.FunctionDef], overloaded: bool) -> list[str]:
    if not callable(ours):
        return [f"{where}: not callable"]
    if overloaded:
        return [f"{where}: overload {problem}" for d in defs for problem in overload_binds(ours, d)]
    (stub_def,) = defs
    expected, actual = stub_params(stub_def), our_params(ours)
    return [] if expected == actual else [f"{where}: signature {actual} != sora-sdk's {expected}"]


def compare_class(stub: StubClass, ours: Any, module: Any) -> list[str]:
    where = stub.qualname
    if not isinstance(ours, type):
        return [f"{where}: missing or not a class"]
    problems: list[str] = []
    for base in stub.bases:
        if base.startswith("enum."):
            continue
        our_base = getattr(module, base, None)
        if not (isinstance(our_base, type) and issubclass(ours, our_base)):
            problems.append(f"{where}: not a subclass of {base}")
    if stub.is_enum:
        if not issubclass(ours, enum.IntEnum):
            problems.append(f"{where}: not an IntEnum")
        elif [(m.name, m.value) for m in ours] != stub.members:
            problems.append(f"{where}: members {[(m.name, m.value) for m in ours]} != {stub.members}")
        return problems
    for name, defs in stub.methods.items():
        if name not in vars(ours) and not any(name in vars(k) for k in ours.__mro__[:-1]):
            problems.append(f"{where}.{name}: missing")
            continue
        problems += compare_function(f"{where}.{name}", getattr(ours, name), defs, name in stub.overloaded)
    for name, setter in stub.properties.items():
        prop = inspect.getattr_static(ours, name, None)
        if not isinstance(prop, property):
            problems.append(f"{where}.{name}: not a property")
            continue
        if setter is not None:
            if prop.fset is None:
                problems.append(f"{where}.{name}: read-only, sora-sdk's can be set")
            else:
                problems += compare_function(f"{where}.{name}.setter", prop.fset, [setter], False)
    for name, nested in stub.nested.items():
        problems += compare_class(nested, getattr(ours, name, None), module)
    if "__init__" not in stub.methods:
        # No constructor in sora-sdk: only factories and callbacks make them.
        try:
            ours()
        except TypeError:
            pass
        else:
            problems.append(f"{where}: constructible, sora-sdk's is not")
    return problems


# -- surface ------------------------------------------------------------------------------------


@needs_sora_sdk
def test_every_public_name_of_sora_sdk_exists_with_its_signature() -> None:
    stub = load_stub()
    problems: list[str] = []
    for name, stub_class in stub.classes.items():
        problems += compare_class(stub_class, getattr(compat, name, None), compat)
    for name, defs in stub.functions.items():
        ours = getattr(compat, name, None)
        if ours is None:
            problems.append(f"{name}: missing")
        else:
            problems += compare_function(name, ours, defs, name in stub.overloaded)
    assert not problems, "\n".join(problems)
    expected = set(stub.classes) | set(stub.functions)
    assert set(compat.__all__) == expected, (
        f"missing from __all__: {sorted(expected - set(compat.__all__))}, "
        f"extra: {sorted(set(compat.__all__) - expected)}"
    )
    # The walk covered what it should: a stub change must not make it vacuous.
    assert len(stub.classes) >= 33 and len(stub.functions) >= 4 and {"Sora", "SoraConnection", "SoraVideoSink"} <= set(stub.classes)
    assert len(stub.classes["Sora"].methods["create_connection"][0].args.args) == 48


def test_surface_checker_catches_differences() -> None:
    """The comparison itself: a wrong default, a missing positional-only marker, a missing overload form."""
    tree = ast.parse(
        "def f(self, a: int, b: int = 1) -> None: ...\n"
        "def g(self, arg: int, /) -> None: ...\n"
        "def h(self, data: int, samples_per_channel: int) -> None: ...\n"
    )
    f_def, g_def, h_def = (n for n in tree.body if isinstance(n, ast.FunctionDef))

    def wrong_default(self: Any, a: int, b: int = 2) -> None: ...
    def not_positional_only(self: Any, arg: int) -> None: ...
    def only_one_argument(self: Any, ndarray: Any) -> None: ...

    assert compare_function("f", wrong_default, [f_def], False)
    assert compare_function("g", not_positional_only, [g_def], False)
    assert compare_function("h", only_one_argument, [h_def], True)
    assert not compare_function("f", lambda self, a, b=1: None, [f_def], False)


# -- parity with the real sora-sdk ----------------------------------------------------------------

PARITY_SCRIPT = r'''
import importlib, json, os, pickle, sys
s = importlib.import_module(sys.argv[1])
T, I = s.SoraVideoCodecType, s.SoraVideoCodecImplementation
P, C = s.SoraVideoCodecPreference, s.SoraVideoCodecPreference.Codec

def error(fn):
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__
    return None

out = {}
enums = ["SoraSignalingErrorCode", "SoraSignalingType", "SoraDegradationPreference", "SoraSignalingDirection",
         "SoraTrackState", "SoraLoggingSeverity", "SoraTransformableFrameDirection",
         "SoraTransformableAudioFrameType", "SoraVideoCodecImplementation", "SoraVideoCodecType"]
out["enums"] = {n: [[str(m), repr(m), f"{m}", f"{m:d}", int(m)] for m in getattr(s, n)] for n in enums}

p = P([C(T.VP8, I.INTEL_VPL), C(T.AV1, None, I.INTERNAL)])
out["find"] = [p.find(T.VP8), p.find(T.AV1), p.find(T.H265)]
out["get_or_add"] = [p.get_or_add(T.AV1), p.get_or_add(T.H264)]
out["has_implementation"] = [p.has_implementation(i) for i in I]
p.merge(P([C(T.VP8, I.INTERNAL, None), C(T.VP9, I.INTERNAL, I.INTERNAL)]))
out["merged"] = p.to_json()
out["after_merge"] = [p.has_implementation(I.INTEL_VPL), len(p.codecs)]
out["unset_type"] = error(lambda: C().type)
c = C(T.H265)
c.encoder = I.AMD_AMF
out["codec"] = [str(c.type), str(c.encoder), c.decoder]
p.codecs = [c]
out["codecs_set"] = p.to_json()
out["empty"] = P().to_json()

f = s.SoraAudioFrame.__new__(s.SoraAudioFrame)
f.__setstate__(([1, 2, 3, 4, 5, 6], 3, 2, 16000, 123))
out["frame"] = [f.samples_per_channel, f.num_channels, f.sample_rate_hz, f.absolute_capture_timestamp_ms,
                f.data().tolist(), str(f.data().dtype), list(f.__getstate__())]
g = pickle.loads(pickle.dumps(f))
out["unpickled"] = [g.data().tolist(), g.sample_rate_hz, g.absolute_capture_timestamp_ms]
h = s.SoraAudioFrame.__new__(s.SoraAudioFrame)
h.__setstate__(([65535, 1, 32768, 32767], 4, 1, 48000, None))  # sora-sdk keeps samples as uint16
out["frame_negative"] = [h.data().tolist(), list(h.__getstate__())]
z = s.SoraAudioFrame.__new__(s.SoraAudioFrame)
z.__setstate__(([0] * 480, 480, 1, 48000, None))  # 10 ms of silence, the frame size sora-sdk's VAD expects
vad = s.SoraVAD()
out["vad"] = [vad.analyze(z) < 0.2, error(lambda: vad.analyze(None)), error(lambda: vad.analyze(z.data()))]

no_ctor = ["SoraConnection", "SoraTrackInterface", "SoraMediaTrack", "SoraAudioSource", "SoraVideoSource",
           "SoraAudioFrame", "SoraVideoFrame", "SoraTransformableFrame", "SoraTransformableAudioFrame",
           "SoraTransformableVideoFrame", "SoraFrameTransformer", "SoraVideoCodecCapability"]
out["constructors"] = {n: error(getattr(s, n)) for n in no_ctor}
out["constructible"] = [error(s.SoraAudioFrameTransformer), error(s.SoraVideoFrameTransformer), error(s.SoraVAD),
                        error(P), error(C), error(P.Parameters)]
out["transformer"] = [s.SoraAudioFrameTransformer().on_transform, s.SoraVideoFrameTransformer().on_transform]

sora = s.Sora()
v = sora.create_video_source()
out["video_source"] = [v.kind, str(v.state), v.enabled, v.set_enabled(False), v.set_enabled(False), v.enabled,
                       v.set_enabled(True), v.enabled]
a = sora.create_audio_source(1, 16000)
out["audio_source"] = [a.kind, str(a.state), a.enabled]
conn = sora.create_connection(signaling_urls=["ws://127.0.0.1:9/signaling"], role="recvonly", channel_id="parity")
callback = lambda *args: None
out["before_set"] = [conn.on_notify, conn.on_track, conn.on_disconnect, conn.on_message]
conn.on_notify = callback
conn.on_disconnect = callback
out["callbacks"] = [conn.on_notify is callback, conn.on_disconnect is callback]
out["unconnected"] = [conn.get_stats(), conn.send_data_channel("#x", b"data")]
print(json.dumps(out), flush=True)
os._exit(0)  # skip libwebrtc's teardown of a connection that never connected
'''


def run_parity(module: str, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "parity.py"
    script.write_text(PARITY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PYTHON_SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), module], capture_output=True, text=True, timeout=60,
                          env=env, check=False)
    assert proc.returncode == 0, f"{module}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@needs_sora_sdk
def test_behaves_like_sora_sdk_where_no_server_is_needed(tmp_path: Path) -> None:
    real = run_parity("sora_sdk", tmp_path)
    ours = run_parity("hibiki.compat.sora_sdk", tmp_path)
    differences = {k: (real[k], ours.get(k)) for k in real if real[k] != ours.get(k)}
    assert not differences, json.dumps(differences, indent=1)
    assert set(real) == set(ours)


# -- units ------------------------------------------------------------------------------------


def test_enums_print_like_sora_sdk() -> None:
    code = compat.SoraSignalingErrorCode.WEBSOCKET_ONCLOSE
    assert (str(code), repr(code), f"{code}", f"{code:d}") == (
        "SoraSignalingErrorCode.WEBSOCKET_ONCLOSE",) * 3 + ("5",)
    assert code == hibiki_code("WEBSOCKET_ONCLOSE")  # IntEnums of the same value compare equal


def hibiki_code(name: str) -> Any:
    from hibiki.client.events import SignalingErrorCode

    return SignalingErrorCode[name]


def test_audio_source_takes_all_four_on_data_forms() -> None:
    source = compat.Sora().create_audio_source(2, 16000)
    pcm = np.arange(320, dtype=np.int16).reshape(160, 2)
    parse = source._parse
    for args, kwargs in (
        ((pcm,), {}),
        ((pcm, 1.5), {}),
        ((), {"ndarray": pcm, "timestamp": 1.5}),
        ((pcm.ctypes.data, 160), {}),
        ((pcm.ctypes.data, 160, 1.5), {}),
        ((), {"data": pcm.ctypes.data, "samples_per_channel": 160}),
    ):
        got = parse(args, kwargs)
        assert got.shape == (160, 2) and np.array_equal(got, pcm), (args, kwargs)
    address_copy = parse((pcm.ctypes.data, 160), {})
    assert not np.shares_memory(address_copy, pcm)  # copied right away, as sora-sdk does
    for bad_args, bad_kwargs in (((), {}), (("pcm",), {}), ((pcm, 1.0, 2.0), {}), ((pcm,), {"data": 1}),
                                 ((pcm.ctypes.data,), {})):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            source.on_data(*bad_args, **bad_kwargs)
    before = source.hibiki_source.frames_in
    source.on_data(pcm)
    source.on_data(pcm.ctypes.data, 160, 0.5)
    assert source.hibiki_source.frames_in == before + 2


def test_video_source_timestamp_forms() -> None:
    source = compat.Sora().create_video_source()
    seen: list[float | None] = []
    inner = source.hibiki_source
    original = inner.on_captured
    inner.on_captured = lambda ndarray, timestamp=None: seen.append(timestamp)  # type: ignore[method-assign]
    try:
        picture = np.zeros((48, 64, 3), dtype=np.uint8)
        source.on_captured(picture)
        source.on_captured(picture, 1.25)  # float: seconds
        source.on_captured(picture, 1_250_000)  # int: microseconds (sora-sdk's timestamp_us overload)
        source.on_captured(ndarray=picture, timestamp_us=2_000_000)
        source.on_captured(picture, timestamp=3.0)
        with pytest.raises(TypeError):
            source.on_captured()  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            source.on_captured(picture, timestamp=1.0, timestamp_us=1)  # type: ignore[call-overload]
    finally:
        inner.on_captured = original  # type: ignore[method-assign]
    assert seen == [None, 1.25, 1.25, 2.0, 3.0]


def test_not_yet_implemented_parts_say_so() -> None:
    sora = compat.Sora()
    pref = compat.SoraVideoCodecPreference([compat.SoraVideoCodecPreference.Codec(
        compat.SoraVideoCodecType.H264, compat.SoraVideoCodecImplementation.NVIDIA_VIDEO_CODEC_SDK)])
    with pytest.raises(RuntimeError, match="NVIDIA_VIDEO_CODEC_SDK"):  # no NVIDIA GPU here: says what is missing
        compat.Sora(video_codec_preference=pref)
    with pytest.raises(NotImplementedError, match="local sources"):
        compat.SoraVideoSink(sora.create_video_source())


def test_codec_capability_reports_what_ffmpeg_can_do() -> None:
    cap = compat.get_video_codec_capability()
    (engine,) = cap.engines
    assert engine.name == compat.SoraVideoCodecImplementation.INTERNAL
    vp8 = next(c for c in engine.codecs if c.type == compat.SoraVideoCodecType.VP8)
    assert vp8.encoder and vp8.decoder
    assert [c.type.name for c in engine.codecs] == ["VP8", "VP9", "H264", "H265", "AV1"]
    preference = compat.create_video_codec_preference_from_implementation(
        cap, compat.SoraVideoCodecImplementation.INTERNAL)
    assert preference.to_json()["codecs"][0] == {  # type: ignore[index]
        "type": "VP8", "encoder": "internal", "decoder": "internal", "parameters": {}}
    compat.Sora(video_codec_preference=preference)  # what this process can do is accepted


def test_ignored_arguments_warn_at_the_callers_line() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.Sora().create_connection(["ws://127.0.0.1:9/signaling"], "recvonly", "x", insecure=True,
                                        simulcast=True, spotlight=True)
    (warning,) = caught
    assert "insecure" in str(warning.message) and warning.filename == __file__


def test_logging_switches() -> None:
    import logging

    compat.enable_libwebrtc_log(compat.SoraLoggingSeverity.WARNING)
    assert logging.getLogger("hibiki").level == logging.WARNING
    compat.rtc_log(compat.SoraLoggingSeverity.ERROR, "from a sora-sdk program")
    compat.enable_libwebrtc_log(compat.SoraLoggingSeverity.NONE)
    assert logging.getLogger("hibiki").level > logging.CRITICAL
    with pytest.raises(TypeError):
        compat.enable_libwebrtc_log(42)  # type: ignore[arg-type]
    logging.getLogger("hibiki").setLevel(logging.NOTSET)


def test_connect_failure_reaches_on_disconnect_and_connect_returns_at_once() -> None:
    sora = compat.Sora()
    conn = sora.create_connection([f"ws://127.0.0.1:{free_tcp_port()}/signaling"], "recvonly", new_channel_id(),
                                  websocket_connection_timeout=3)
    got: list[tuple[Any, str]] = []
    conn.on_disconnect = lambda code, message: got.append((code, message))
    started = time.monotonic()
    conn.connect()
    assert time.monotonic() - started < 0.5  # sora-sdk's connect() does not wait for the outcome
    with pytest.raises(RuntimeError, match="already"):
        conn.connect()
    wait_until(lambda: bool(got), 10, "on_disconnect")
    code, message = got[0]
    assert type(code) is compat.SoraSignalingErrorCode
    assert code == compat.SoraSignalingErrorCode.WEBSOCKET_HANDSHAKE_FAILED and message
    conn.disconnect()  # idempotent after a failure
    assert len(got) == 1


# -- against a real server ----------------------------------------------------------------------

WIDTH, HEIGHT, FPS, RATE = 320, 240, 15, 48_000


class Publisher:
    """Feeds sora-sdk style sources with the counter pattern and a 440 Hz tone in real time."""

    def __init__(self, video: Any, audio: Any) -> None:
        self.video, self.audio = video, audio
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        counter = start = 0
        chunk = RATE // 100
        next_video = next_audio = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_video:
                self.video.on_captured(test_pattern(counter, WIDTH, HEIGHT))
                counter += 1
                next_video += 1 / FPS
            if now >= next_audio:
                self.audio.on_data(tone(440.0, RATE, 1, start, chunk))
                start += chunk
                next_audio += chunk / RATE
            self.stop.wait(max(0.0, min(next_video, next_audio) - time.monotonic()))

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


class Recorder:
    """The callbacks of one SoraConnection, recorded with their argument types."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.offer: dict[str, Any] | None = None
        self.notifies: list[dict[str, Any]] = []
        self.signaling: list[tuple[Any, Any, str]] = []
        self.tracks: list[Any] = []
        self.ws_close: list[tuple[int, str]] = []
        self.disconnect: list[tuple[Any, str]] = []
        conn.on_set_offer = lambda text: setattr(self, "offer", json.loads(text))
        conn.on_notify = lambda text: self.notifies.append(json.loads(text))
        conn.on_signaling_message = lambda kind, direction, text: self.signaling.append(
            (kind, direction, json.loads(text)["type"]))
        conn.on_track = self.tracks.append
        conn.on_ws_close = lambda code, reason: self.ws_close.append((code, reason))
        conn.on_disconnect = lambda code, message: self.disconnect.append((code, message))

    def connected(self) -> bool:
        own = self.offer["connection_id"] if self.offer else None
        return any(n.get("event_type") == "connection.created" and n.get("connection_id") == own
                   for n in self.notifies)


def test_media_callbacks_sinks_and_stats_through_a_server(server: Any) -> None:
    channel = new_channel_id()
    sora = compat.Sora()
    video, audio = sora.create_video_source(), sora.create_audio_source(1, RATE)
    pub = sora.create_connection([server.signaling_url], "sendonly", channel, audio_source=audio, video_source=video)
    sub = sora.create_connection([server.signaling_url], "recvonly", channel)
    pub_events, sub_events = Recorder(pub), Recorder(sub)

    counters: list[int | None] = []
    stream_frames: list[Any] = []
    keep: list[Any] = []

    def on_track(track: Any) -> None:
        sub_events.tracks.append(track)
        if track.kind == "video":
            sink = compat.SoraVideoSink(track)
            sink.on_frame = lambda frame: counters.append(read_counter(frame.data()))
            keep.append(sink)
        else:
            keep.append(compat.SoraAudioSink(track, 16000, 1))
            stream = compat.SoraAudioStreamSink(track, 48000, 1)
            stream.on_frame = stream_frames.append
            keep.append(stream)

    sub.on_track = on_track
    with Publisher(video, audio):
        pub.connect()
        wait_until(pub_events.connected, 15, "the publisher's own connection.created")
        sub.connect()
        wait_until(sub_events.connected, 15, "the subscriber's own connection.created")
        wait_until(lambda: len([c for c in counters if c is not None]) >= 15, 20, "15 readable video frames")
        audio_sink = next(k for k in keep if isinstance(k, compat.SoraAudioSink))
        ok, pcm = audio_sink.read(16000, timeout=10)
        assert ok and pcm.shape == (16000, 1) and pcm.dtype == np.int16
        assert abs(dominant_frequency(pcm, 16000) - 440) < 10
        wait_until(lambda: len(stream_frames) >= 10, 10, "SoraAudioStreamSink frames")

        pub_stats = json.loads(pub.get_stats())
        sub_stats = json.loads(sub.get_stats())

    readable = [c for c in counters if c is not None]
    assert readable == sorted(readable) and readable[-1] > readable[0]

    # Callback types are sora-sdk's.
    assert {type(t) for t in sub_events.tracks} == {compat.SoraMediaTrack}
    assert sorted(t.kind for t in sub_events.tracks) == ["audio", "video"]
    assert {t.stream_id for t in sub_events.tracks} == {pub_events.offer["connection_id"]}  # type: ignore[index]
    assert all(t.state == compat.SoraTrackState.LIVE for t in sub_events.tracks)
    kinds = {(type(k).__name__, type(d).__name__) for k, d, _ in pub_events.signaling}
    assert kinds == {("SoraSignalingType", "SoraSignalingDirection")}
    assert [m for k, d, m in pub_events.signaling][:3] == ["connect", "offer", "answer"]

    frame = stream_frames[-1]
    assert isinstance(frame, compat.SoraAudioFrame)
    assert (frame.sample_rate_hz, frame.num_channels) == (48000, 1) and frame.data().shape[1] == 1
    assert pickle.loads(pickle.dumps(frame)).data().tolist() == frame.data().tolist()

    # get_stats: W3C-style entries with what Hibiki counts.
    for report in (pub_stats, sub_stats):
        assert all({"id", "type", "timestamp"} <= set(r) for r in report)
        assert len({r["id"] for r in report}) == len(report)
    by_type = {(r["type"], r.get("kind")): r for r in pub_stats}
    out_video = by_type[("outbound-rtp", "video")]
    assert out_video["framesEncoded"] > 10 and out_video["bytesSent"] > 10_000
    assert (out_video["frameWidth"], out_video["frameHeight"]) == (WIDTH, HEIGHT)
    codecs = {r["id"]: r for r in pub_stats if r["type"] == "codec"}
    assert codecs[out_video["codecId"]]["mimeType"] == "video/VP8"
    assert codecs[by_type[("outbound-rtp", "audio")]["codecId"]]["mimeType"] == "audio/opus"
    assert by_type[("transport", None)]["dtlsState"] == "connected"
    in_video = next(r for r in sub_stats if r["type"] == "inbound-rtp" and r["kind"] == "video")
    assert in_video["framesDecoded"] > 10 and in_video["bytesReceived"] > 10_000
    assert in_video["frameWidth"] == WIDTH
    # microseconds since the epoch, like sora-sdk (libwebrtc)
    assert abs(pub_stats[0]["timestamp"] / 1e6 - time.time()) < 60

    # disconnect() returns once on_disconnect has run, with sora-sdk's enum.
    sub.disconnect()
    assert len(sub_events.disconnect) == 1
    code, _ = sub_events.disconnect[0]
    assert type(code) is compat.SoraSignalingErrorCode and code == compat.SoraSignalingErrorCode.CLOSE_SUCCEEDED
    assert sub_events.ws_close and sub_events.ws_close[0][0] == 1000
    assert all(t.state == compat.SoraTrackState.ENDED for t in sub_events.tracks)
    pub.disconnect()
    assert pub_events.disconnect[0][0] == compat.SoraSignalingErrorCode.CLOSE_SUCCEEDED
    assert pub.get_stats() != "[]"  # still valid JSON after the close
    json.loads(pub.get_stats())


def test_a_sink_stops_when_garbage_collected(server: Any) -> None:
    """As in sora-sdk, a sink works while the Python object lives."""
    channel = new_channel_id()
    sora = compat.Sora()
    video, audio = sora.create_video_source(), sora.create_audio_source(1, RATE)
    pub = sora.create_connection([server.signaling_url], "sendonly", channel, audio_source=audio, video_source=video,
                                 audio=False)
    sub = sora.create_connection([server.signaling_url], "recvonly", channel, audio=False)
    tracks: list[Any] = []
    sub.on_track = tracks.append
    frames = [0]

    def count(frame: Any) -> None:
        frames[0] += 1

    try:
        with Publisher(video, audio):
            pub.connect()
            sub.connect()
            wait_until(lambda: bool(tracks), 15, "a video track")
            sink = compat.SoraVideoSink(tracks[0])
            sink.on_frame = count
            wait_until(lambda: frames[0] >= 5, 15, "frames in the sink")
            del sink
            gc.collect()
            time.sleep(0.2)  # a frame already being delivered may still land
            settled = frames[0]
            time.sleep(0.6)
            assert frames[0] == settled
            assert not tracks[0].hibiki_track._video_sinks
    finally:
        sub.disconnect()
        pub.disconnect()


def _server_offers_data_channels(server: Any) -> bool:
    from conftest import connect_and_get_offer, run

    async def probe() -> bool:
        ws, offer = await connect_and_get_offer(server, role="sendrecv", data_channel_signaling=True,
                                                data_channels=[{"label": "#probe", "direction": "sendrecv"}])
        await ws.close()
        return any(isinstance(d, dict) and d.get("label") == "#probe" for d in offer.get("data_channels") or [])

    return run(probe(), 15)


def test_data_channel_messaging_between_two_compat_connections(server: Any) -> None:
    if not _server_offers_data_channels(server):
        pytest.skip("this hibiki serve does not open messaging DataChannels yet")
    channel = new_channel_id()
    sora = compat.Sora()
    conns: list[Any] = []
    received: list[list[tuple[str, bytes]]] = [[], []]
    opened: list[list[str]] = [[], []]
    for i in range(2):
        conn = sora.create_connection([server.signaling_url], "sendrecv", channel, audio=False, video=False,
                                      data_channel_signaling=True,
                                      data_channels=[{"label": "#chat", "direction": "sendrecv"}])
        conn.on_data_channel = opened[i].append
        conn.on_message = lambda label, data, i=i: received[i].append((label, data))
        conns.append(conn)
    try:
        for conn in conns:
            conn.connect()
        wait_until(lambda: all("#chat" in o for o in opened), 15, "#chat open on both")
        assert conns[0].send_data_channel("#chat", b"from 0") is True
        assert conns[1].send_data_channel("#chat", b"from 1") is True
        assert conns[0].send_data_channel("#not-listed", b"x") is False
        wait_until(lambda: (("#chat", b"from 1") in received[0]) and (("#chat", b"from 0") in received[1]),
                   10, "each message at the other side")
        stats = json.loads(conns[0].get_stats())
        assert any(r["type"] == "data-channel" and r.get("label") == "#chat" for r in stats)
    finally:
        for conn in conns:
            conn.disconnect()
