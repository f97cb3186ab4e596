//! `audio_level_dbov`: buffer handling around `engine::audio_level`.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// RFC 6464 level (dBov, -127 ..= 0) of int16 PCM in any buffer: a numpy
/// array of any shape, interleaved channels included.
#[pyfunction]
pub fn audio_level_dbov(pcm: &Bound<'_, PyAny>) -> PyResult<i8> {
    // `get` checks the element format (int16) and alignment.
    let buf = PyBuffer::<i16>::get(pcm).map_err(|e| {
        PyValueError::new_err(format!("audio_level_dbov: expected int16 samples ({e})"))
    })?;
    match buf.as_slice_ptr() {
        // SAFETY: the exporter keeps the memory alive while `buf` is held,
        // and the GIL (held throughout this short call) keeps Python code
        // from resizing or freeing it.
        Some(samples) => Ok(engine::audio_level::dbov(unsafe { samples.as_ref() })),
        None => Ok(engine::audio_level::dbov(&buf.to_vec(pcm.py())?)),
    }
}
