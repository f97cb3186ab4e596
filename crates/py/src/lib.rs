//! `hibiki._core`: a thin PyO3 layer over the `engine` crate.
//!
//! Nothing here decides anything: it converts arguments, releases the GIL
//! around calls that wait on an engine thread, and turns engine events into
//! Python objects. The type stub is `python/hibiki/_core.pyi`.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Once;
use std::time::Duration;

use engine::client::ClientEngine as EngineClient;
use engine::event::EngineEvent;
use engine::sfu::{ChannelSpec, ConnectionSpec, DataChannelSpec, OpusFmtp, Sfu as EngineSfu};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

mod audio_level;
mod pixels;

/// Route the engine's `tracing` output to stderr once, filtered by
/// `HIBIKI_LOG` (e.g. `HIBIKI_LOG=engine=debug`), default warnings only.
fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("HIBIKI_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    });
}

/// One engine event (see `_core.pyi`).
#[pyclass(frozen, get_all, module = "hibiki._core")]
struct Event {
    kind: &'static str,
    connection: String,
    mid: Option<String>,
    media: Option<&'static str>,
    codec: Option<&'static str>,
    sdp: Option<String>,
    data: Option<Py<PyBytes>>,
    rtp_time: Option<u64>,
    keyframe: Option<bool>,
    contiguous: Option<bool>,
    stream_id: Option<String>,
    track_id: Option<String>,
    bitrate: Option<u64>,
    reason: Option<String>,
    label: Option<String>,
    payload_type: Option<u8>,
    ssrc: Option<u32>,
    sequence_number: Option<u64>,
    audio_level: Option<i8>,
    capture_time_ms: Option<f64>,
    picture_id: Option<u64>,
    temporal_index: Option<u8>,
    spatial_index: Option<u8>,
    rid: Option<String>,
    previous_rid: Option<String>,
    frames: Option<Py<FrameQueue>>,
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        format!(
            "Event(kind={:?}, connection={:?}, mid={:?}, media={:?})",
            self.kind, self.connection, self.mid, self.media
        )
    }
}

fn to_py_events(py: Python<'_>, events: Vec<EngineEvent>) -> PyResult<Vec<Py<Event>>> {
    events
        .into_iter()
        .map(|e| {
            let f = e.frame;
            Py::new(
                py,
                Event {
                    kind: e.kind.as_str(),
                    connection: e.connection.to_string(),
                    mid: e.mid,
                    media: e.media,
                    codec: e.codec,
                    sdp: e.sdp,
                    data: e.data.map(|d| PyBytes::new(py, &d).unbind()),
                    rtp_time: e.rtp_time,
                    keyframe: e.keyframe,
                    contiguous: e.contiguous,
                    stream_id: e.stream_id,
                    track_id: e.track_id,
                    bitrate: e.bitrate,
                    reason: e.reason,
                    label: e.label,
                    payload_type: f.map(|f| f.payload_type),
                    ssrc: f.and_then(|f| f.ssrc),
                    sequence_number: f.map(|f| f.sequence_number),
                    audio_level: f.and_then(|f| f.audio_level),
                    capture_time_ms: f.and_then(|f| f.capture_time_ms),
                    picture_id: f.and_then(|f| f.picture_id),
                    temporal_index: f.and_then(|f| f.temporal_index),
                    spatial_index: f.and_then(|f| f.spatial_index),
                    rid: e.rid,
                    previous_rid: e.previous_rid,
                    frames: e
                        .frames
                        .map(|q| Py::new(py, FrameQueue { inner: q }))
                        .transpose()?,
                },
            )
        })
        .collect()
}

/// The frames of one remote track, for its decoder thread (see `_core.pyi`).
#[pyclass(frozen, module = "hibiki._core")]
struct FrameQueue {
    inner: std::sync::Arc<engine::frames::FrameQueue>,
}

#[pymethods]
impl FrameQueue {
    /// (frames, overflowed, closed), blocking up to `timeout` without the GIL.
    #[pyo3(signature = (timeout, max=64))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: f64,
        max: usize,
    ) -> PyResult<(Vec<Py<Event>>, bool, bool)> {
        let d = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let batch = py.detach(|| self.inner.wait(d, max));
        Ok((
            to_py_events(py, batch.frames)?,
            batch.overflowed,
            batch.closed,
        ))
    }

    fn wake(&self) {
        self.inner.wake();
    }

    fn close(&self) {
        self.inner.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

/// The result of `Sfu.create_connection`.
#[pyclass(frozen, get_all, module = "hibiki._core")]
struct CreatedConnection {
    sdp: String,
    audio_mid: Option<String>,
    video_mid: Option<String>,
}

/// Counters of one shard.
#[pyclass(frozen, get_all, module = "hibiki._core")]
struct ShardStats {
    rx_packets: u64,
    tx_packets: u64,
    forwarded_packets: u64,
    connections: u64,
    send_dropped: u64,
}

/// `d[key]` converted, None when absent or None; `what` names the dict in errors.
fn optional<'py, T: FromPyObjectOwned<'py>>(
    d: &Bound<'py, PyDict>,
    key: &str,
    what: &str,
) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => {
            Ok(Some(v.extract().map_err(|_| {
                PyValueError::new_err(format!("{what} {key:?} has the wrong type"))
            })?))
        }
        _ => Ok(None),
    }
}

/// A data channel description from Python: a dict with `label` and
/// optional `ordered`, `max_packet_life_time`, `max_retransmits`,
/// `protocol`, `messaging`, `send`, `recv`, `header`.
fn data_channel_spec(d: &Bound<'_, PyDict>) -> PyResult<DataChannelSpec> {
    let label: String = optional(d, "label", "data channel field")?
        .ok_or_else(|| PyValueError::new_err("data channel needs a label"))?;
    Ok(DataChannelSpec {
        messaging: optional(d, "messaging", "data channel field")?
            .unwrap_or_else(|| label.starts_with('#')),
        send: optional(d, "send", "data channel field")?.unwrap_or(true),
        recv: optional(d, "recv", "data channel field")?.unwrap_or(true),
        header: optional(d, "header", "data channel field")?.unwrap_or(false),
        compress: optional(d, "compress", "data channel field")?.unwrap_or(false),
        channel: ChannelSpec {
            label,
            ordered: optional(d, "ordered", "data channel field")?.unwrap_or(true),
            max_packet_life_time: optional(d, "max_packet_life_time", "data channel field")?,
            max_retransmits: optional(d, "max_retransmits", "data channel field")?,
            protocol: optional(d, "protocol", "data channel field")?.unwrap_or_default(),
        },
    })
}

/// Sora's `audio.opus_params` (validated by the server) as fmtp values.
fn opus_fmtp(d: &Bound<'_, PyDict>) -> PyResult<OpusFmtp> {
    Ok(OpusFmtp {
        stereo: optional(d, "stereo", "opus_params field")?,
        sprop_stereo: optional(d, "sprop_stereo", "opus_params field")?,
        use_inband_fec: optional(d, "useinbandfec", "opus_params field")?,
        use_dtx: optional(d, "usedtx", "opus_params field")?,
        min_p_time: optional(d, "minptime", "opus_params field")?,
    })
}

fn value_err(e: String) -> PyErr {
    PyValueError::new_err(e)
}

fn parse_ip(s: &str) -> PyResult<IpAddr> {
    s.parse()
        .map_err(|_| PyValueError::new_err(format!("invalid IP address: {s:?}")))
}

/// The SFU data plane.
#[pyclass(module = "hibiki._core")]
struct Sfu {
    inner: Option<EngineSfu>,
}

impl Sfu {
    fn get(&self) -> PyResult<&EngineSfu> {
        self.inner
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the SFU is closed"))
    }
    fn get_mut(&mut self) -> PyResult<&mut EngineSfu> {
        self.inner
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the SFU is closed"))
    }
}

#[pymethods]
impl Sfu {
    #[new]
    #[pyo3(signature = (bind_ip="127.0.0.1", port=0, public_ip=None, shards=1))]
    fn new(bind_ip: &str, port: u16, public_ip: Option<&str>, shards: usize) -> PyResult<Self> {
        init_tracing();
        let bind = parse_ip(bind_ip)?;
        let public = public_ip.map(parse_ip).transpose()?;
        if public.is_none() && bind.is_unspecified() {
            return Err(PyValueError::new_err(
                "binding to a wildcard address needs public_ip (the address clients reach)",
            ));
        }
        let inner = EngineSfu::start(bind, port, public, shards)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start SFU: {e}")))?;
        Ok(Sfu { inner: Some(inner) })
    }

    #[getter]
    fn rtc_ports(&self) -> PyResult<Vec<u16>> {
        Ok(self.get()?.ports())
    }

    fn fileno(&self) -> PyResult<i32> {
        Ok(self.get()?.events().fileno())
    }

    #[pyo3(signature = (max=256))]
    fn poll_events(&mut self, py: Python<'_>, max: usize) -> PyResult<Vec<Py<Event>>> {
        let sfu = self.get_mut()?;
        let events = sfu.events().drain(max);
        for e in &events {
            if e.kind == engine::event::EventKind::Closed {
                sfu.forget(&e.connection);
            }
        }
        to_py_events(py, events)
    }

    #[pyo3(signature = (timeout, max=256))]
    fn wait_events(
        &mut self,
        py: Python<'_>,
        timeout: f64,
        max: usize,
    ) -> PyResult<Vec<Py<Event>>> {
        let sfu = self.get_mut()?;
        let d = Duration::from_secs_f64(timeout.max(0.0));
        let events = py.detach(|| sfu.events().wait(d, max));
        for e in &events {
            if e.kind == engine::event::EventKind::Closed {
                sfu.forget(&e.connection);
            }
        }
        to_py_events(py, events)
    }

    #[pyo3(signature = (channel_id, connection_id, *, send_audio, send_video, recv, video_codec="VP8", audio_codec="OPUS", data_channels=None, opus_params=None, simulcast_rids=None, simulcast_layer=Some(2), bandwidth_estimation=false, spotlight=None))]
    #[allow(clippy::too_many_arguments)]
    fn create_connection(
        &mut self,
        py: Python<'_>,
        channel_id: &str,
        connection_id: &str,
        send_audio: bool,
        send_video: bool,
        recv: bool,
        video_codec: &str,
        audio_codec: &str,
        data_channels: Option<Vec<Bound<'_, PyDict>>>,
        opus_params: Option<Bound<'_, PyDict>>,
        simulcast_rids: Option<Vec<String>>,
        simulcast_layer: Option<u8>,
        bandwidth_estimation: bool,
        spotlight: Option<(usize, Option<u8>, Option<u8>)>,
    ) -> PyResult<CreatedConnection> {
        let opus = opus_params
            .as_ref()
            .map(opus_fmtp)
            .transpose()?
            .unwrap_or_default();
        let data_channels = data_channels
            .unwrap_or_default()
            .iter()
            .map(data_channel_spec)
            .collect::<PyResult<Vec<_>>>()?;
        for c in [video_codec, audio_codec] {
            if !engine::peer::is_known_codec(c) {
                return Err(PyValueError::new_err(format!("unknown codec {c:?}")));
            }
        }
        let spec = ConnectionSpec {
            channel_id: channel_id.to_string(),
            connection_id: connection_id.to_string(),
            send_audio,
            send_video,
            recv,
            video_codec: video_codec.to_ascii_uppercase(),
            opus,
            data_channels,
            simulcast_rids: simulcast_rids.unwrap_or_default(),
            layer_request: simulcast_layer,
            bandwidth_estimation,
            spotlight: spotlight.map(|(number, focus, unfocus)| {
                (
                    number,
                    engine::sfu::spotlight::SpotlightLayers { focus, unfocus },
                )
            }),
        };
        let sfu = self.get_mut()?;
        let created = py
            .detach(|| sfu.create_connection(spec))
            .map_err(value_err)?;
        Ok(CreatedConnection {
            sdp: created.sdp,
            audio_mid: created.audio_mid,
            video_mid: created.video_mid,
        })
    }

    fn accept_answer(&self, py: Python<'_>, connection_id: &str, sdp: &str) -> PyResult<()> {
        let sfu = self.get()?;
        py.detach(|| sfu.accept_answer(connection_id, sdp))
            .map_err(value_err)
    }

    fn add_remote_candidate(
        &self,
        py: Python<'_>,
        connection_id: &str,
        candidate: &str,
    ) -> PyResult<()> {
        let sfu = self.get()?;
        py.detach(|| sfu.add_remote_candidate(connection_id, candidate))
            .map_err(value_err)
    }

    fn request_keyframe(&self, connection_id: &str) -> PyResult<()> {
        self.get()?
            .request_keyframe(connection_id)
            .map_err(value_err)
    }

    #[pyo3(signature = (connection_id, sender_connection_id, layer))]
    fn set_simulcast_layer(
        &self,
        py: Python<'_>,
        connection_id: &str,
        sender_connection_id: Option<&str>,
        layer: Option<u8>,
    ) -> PyResult<()> {
        let sfu = self.get()?;
        py.detach(|| sfu.set_layer(connection_id, sender_connection_id, layer))
            .map_err(value_err)
    }

    fn send_data(
        &self,
        py: Python<'_>,
        connection_id: &str,
        label: &str,
        data: &[u8],
    ) -> PyResult<bool> {
        let sfu = self.get()?;
        py.detach(|| sfu.send_data(connection_id, label, data))
            .map_err(value_err)
    }

    fn close_channels(&self, connection_id: &str) -> PyResult<()> {
        self.get()?.close_channels(connection_id).map_err(value_err)
    }

    fn close_connection(&mut self, connection_id: &str) -> PyResult<()> {
        self.get_mut()?.close_connection(connection_id);
        Ok(())
    }

    fn stats(&self) -> PyResult<Vec<ShardStats>> {
        Ok(self
            .get()?
            .counters()
            .iter()
            .map(|c| ShardStats {
                rx_packets: c.rx_packets.load(Ordering::Relaxed),
                tx_packets: c.tx_packets.load(Ordering::Relaxed),
                forwarded_packets: c.forwarded_packets.load(Ordering::Relaxed),
                connections: c.connections.load(Ordering::Relaxed),
                send_dropped: c.send_dropped.load(Ordering::Relaxed),
            })
            .collect())
    }

    fn close(&mut self, py: Python<'_>) {
        if let Some(mut sfu) = self.inner.take() {
            py.detach(|| sfu.stop());
        }
    }
}

/// The client data plane.
#[pyclass(module = "hibiki._core")]
struct ClientEngine {
    inner: Option<EngineClient>,
}

impl ClientEngine {
    fn get(&self) -> PyResult<&EngineClient> {
        self.inner
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the client engine is closed"))
    }
}

fn parse_handle(handle: &str) -> PyResult<u64> {
    handle
        .parse()
        .map_err(|_| PyValueError::new_err(format!("invalid connection handle {handle:?}")))
}

#[pymethods]
impl ClientEngine {
    #[new]
    fn new() -> PyResult<Self> {
        init_tracing();
        let inner = EngineClient::start()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start client engine: {e}")))?;
        Ok(ClientEngine { inner: Some(inner) })
    }

    fn fileno(&self) -> PyResult<i32> {
        Ok(self.get()?.events().fileno())
    }

    #[pyo3(signature = (max=256))]
    fn poll_events(&self, py: Python<'_>, max: usize) -> PyResult<Vec<Py<Event>>> {
        let events = self.get()?.events().drain(max);
        to_py_events(py, events)
    }

    #[pyo3(signature = (timeout, max=256))]
    fn wait_events(&self, py: Python<'_>, timeout: f64, max: usize) -> PyResult<Vec<Py<Event>>> {
        let engine = self.get()?;
        let d = Duration::from_secs_f64(timeout.max(0.0));
        let events = py.detach(|| engine.events().wait(d, max));
        to_py_events(py, events)
    }

    #[pyo3(signature = (offer_sdp, *, route_frames=false))]
    fn connect(
        &self,
        py: Python<'_>,
        offer_sdp: &str,
        route_frames: bool,
    ) -> PyResult<(String, String)> {
        let engine = self.get()?;
        let (handle, answer) = py
            .detach(|| engine.connect(offer_sdp, route_frames))
            .map_err(value_err)?;
        Ok((handle.to_string(), answer))
    }

    fn accept_offer(&self, py: Python<'_>, handle: &str, sdp: &str) -> PyResult<String> {
        let h = parse_handle(handle)?;
        let engine = self.get()?;
        py.detach(|| engine.accept_offer(h, sdp)).map_err(value_err)
    }

    fn add_remote_candidate(&self, handle: &str, candidate: &str) -> PyResult<()> {
        self.get()?
            .add_remote_candidate(parse_handle(handle)?, candidate);
        Ok(())
    }

    #[pyo3(signature = (handle, mid, codec, data, rtp_time, capture_age=None, rid=None, audio_level=None))]
    #[allow(clippy::too_many_arguments)]
    fn write_frame(
        &self,
        handle: &str,
        mid: &str,
        codec: &str,
        data: &[u8],
        rtp_time: u64,
        capture_age: Option<f64>,
        rid: Option<&str>,
        audio_level: Option<i8>,
    ) -> PyResult<bool> {
        let age = capture_age
            .filter(|a| a.is_finite() && *a > 0.0)
            .map(|a| Duration::from_secs_f64(a.min(60.0)));
        Ok(self.get()?.write_frame(
            parse_handle(handle)?,
            mid,
            rid,
            codec,
            data,
            rtp_time,
            age,
            audio_level,
        ))
    }

    fn set_desired_bitrate(&self, handle: &str, bps: u64) -> PyResult<()> {
        self.get()?.set_desired_bitrate(parse_handle(handle)?, bps);
        Ok(())
    }

    fn send_info(
        &self,
        py: Python<'_>,
        handle: &str,
        mid: &str,
        codec: &str,
    ) -> PyResult<(u8, u32)> {
        let h = parse_handle(handle)?;
        let engine = self.get()?;
        py.detach(|| engine.send_info(h, mid, codec))
            .map_err(value_err)
    }

    fn send_rids(&self, py: Python<'_>, handle: &str, mid: &str) -> PyResult<Vec<String>> {
        let h = parse_handle(handle)?;
        let engine = self.get()?;
        py.detach(|| engine.send_rids(h, mid)).map_err(value_err)
    }

    fn request_keyframe(&self, handle: &str, mid: &str) -> PyResult<()> {
        self.get()?.request_keyframe(parse_handle(handle)?, mid);
        Ok(())
    }

    fn send_data(&self, py: Python<'_>, handle: &str, label: &str, data: &[u8]) -> PyResult<bool> {
        let h = parse_handle(handle)?;
        let engine = self.get()?;
        py.detach(|| engine.send_data(h, label, data))
            .map_err(value_err)
    }

    fn close_channels(&self, handle: &str) -> PyResult<()> {
        self.get()?.close_channels(parse_handle(handle)?);
        Ok(())
    }

    fn close_connection(&self, handle: &str) -> PyResult<()> {
        self.get()?.close_connection(parse_handle(handle)?);
        Ok(())
    }

    fn close(&mut self, py: Python<'_>) {
        if let Some(mut e) = self.inner.take() {
            py.detach(|| e.stop());
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Event>()?;
    m.add_class::<CreatedConnection>()?;
    m.add_class::<ShardStats>()?;
    m.add_class::<Sfu>()?;
    m.add_class::<ClientEngine>()?;
    m.add_class::<FrameQueue>()?;
    m.add_function(wrap_pyfunction!(pixels::bgr_to_i420, m)?)?;
    m.add_function(wrap_pyfunction!(pixels::i420_to_bgr, m)?)?;
    m.add_function(wrap_pyfunction!(pixels::nv12_to_bgr, m)?)?;
    m.add_function(wrap_pyfunction!(audio_level::audio_level_dbov, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
