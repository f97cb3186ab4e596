//! `bgr_to_i420`, `i420_to_bgr`, `nv12_to_bgr`: buffer handling around
//! `engine::pixels`. The pixels are read and written in place (numpy
//! arrays, `av.VideoFrame` planes) with the GIL released.

use engine::pixels::{self, ColorSpace, I420Mut, Matrix, Nv12, I420};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A picture's memory as found through the buffer protocol.
struct View {
    buf: PyBuffer<u8>,
    /// Bytes from the first to one past the last byte the picture uses.
    span: usize,
}

impl View {
    /// A 1-D plane (bytes, `av.VideoPlane`): all of it.
    fn plane(obj: &Bound<'_, PyAny>, what: &str, writable: bool) -> PyResult<View> {
        let buf = PyBuffer::<u8>::get(obj)
            .map_err(|e| PyValueError::new_err(format!("{what}: not a byte buffer ({e})")))?;
        if writable && buf.readonly() {
            return Err(PyValueError::new_err(format!(
                "{what}: the buffer is read-only"
            )));
        }
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "{what}: the buffer is not contiguous"
            )));
        }
        let span = buf.len_bytes();
        Ok(View { buf, span })
    }

    /// A C-contiguous `(height, width, 3)` uint8 array: (view, width,
    /// height, row stride).
    fn bgr(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<(View, usize, usize, usize)> {
        let buf = PyBuffer::<u8>::get(obj).map_err(|e| {
            PyValueError::new_err(format!("BGR picture: expected a uint8 array ({e})"))
        })?;
        if writable && buf.readonly() {
            return Err(PyValueError::new_err("BGR picture: the array is read-only"));
        }
        let (shape, strides) = (buf.shape(), buf.strides());
        if shape.len() != 3 || shape[2] != 3 {
            return Err(PyValueError::new_err(format!(
                "BGR picture: expected shape (height, width, 3), got {shape:?}"
            )));
        }
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "BGR picture: the array must be C-contiguous (strides {strides:?}); use np.ascontiguousarray"
            )));
        }
        let (height, width) = (shape[0], shape[1]);
        let span = buf.len_bytes();
        Ok((View { buf, span }, width, height, width * 3))
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: the exporter keeps `span` bytes from `buf_ptr` alive while
        // `buf` is held; the caller holds `self` for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const u8, self.span) }
    }

    #[allow(clippy::mut_from_ref)]
    fn slice_mut(&self) -> &mut [u8] {
        // SAFETY: as `slice`, and the buffer was checked writable. Python
        // code writing the same buffer at the same time gives torn pixels,
        // as with any C extension that releases the GIL.
        unsafe { std::slice::from_raw_parts_mut(self.buf.buf_ptr() as *mut u8, self.span) }
    }
}

/// Refuse the same memory twice (say, one plane passed as two): the
/// conversion would write through aliasing references.
fn disjoint(views: &[&View]) -> PyResult<()> {
    let ranges: Vec<(usize, usize)> = views
        .iter()
        .map(|v| (v.buf.buf_ptr() as usize, v.buf.buf_ptr() as usize + v.span))
        .collect();
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.0 < b.1 && b.0 < a.1 {
                return Err(PyValueError::new_err("the picture buffers overlap"));
            }
        }
    }
    Ok(())
}

fn color(colorspace: i32, full_range: bool) -> ColorSpace {
    ColorSpace {
        matrix: Matrix::from_ffmpeg(colorspace),
        full_range,
    }
}

/// Convert a BGR array into the three planes of an I420 picture.
#[pyfunction]
#[pyo3(signature = (bgr, planes, strides, *, colorspace=2, full_range=false))]
pub fn bgr_to_i420(
    py: Python<'_>,
    bgr: &Bound<'_, PyAny>,
    planes: (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>),
    strides: (usize, usize, usize),
    colorspace: i32,
    full_range: bool,
) -> PyResult<()> {
    let (src, width, height, stride) = View::bgr(bgr, false)?;
    let y = View::plane(&planes.0, "Y plane", true)?;
    let u = View::plane(&planes.1, "U plane", true)?;
    let v = View::plane(&planes.2, "V plane", true)?;
    disjoint(&[&src, &y, &u, &v])?;
    let (s, out) = (
        src.slice(),
        I420Mut {
            y: (y.slice_mut(), strides.0),
            u: (u.slice_mut(), strides.1),
            v: (v.slice_mut(), strides.2),
        },
    );
    let c = color(colorspace, full_range);
    py.detach(|| pixels::bgr_to_i420(s, stride, width, height, out, c))
        .map_err(PyValueError::new_err)
}

/// Convert the planes of an I420 picture into a BGR array.
#[pyfunction]
#[pyo3(signature = (planes, strides, out, *, colorspace=2, full_range=false))]
pub fn i420_to_bgr(
    py: Python<'_>,
    planes: (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>),
    strides: (usize, usize, usize),
    out: &Bound<'_, PyAny>,
    colorspace: i32,
    full_range: bool,
) -> PyResult<()> {
    let (dst, width, height, stride) = View::bgr(out, true)?;
    let y = View::plane(&planes.0, "Y plane", false)?;
    let u = View::plane(&planes.1, "U plane", false)?;
    let v = View::plane(&planes.2, "V plane", false)?;
    disjoint(&[&dst, &y, &u, &v])?;
    let src = I420 {
        y: (y.slice(), strides.0),
        u: (u.slice(), strides.1),
        v: (v.slice(), strides.2),
    };
    let d = dst.slice_mut();
    let c = color(colorspace, full_range);
    py.detach(|| pixels::i420_to_bgr(src, width, height, d, stride, c))
        .map_err(PyValueError::new_err)
}

/// Convert the planes of an NV12 picture into a BGR array.
#[pyfunction]
#[pyo3(signature = (planes, strides, out, *, colorspace=2, full_range=false))]
pub fn nv12_to_bgr(
    py: Python<'_>,
    planes: (Bound<'_, PyAny>, Bound<'_, PyAny>),
    strides: (usize, usize),
    out: &Bound<'_, PyAny>,
    colorspace: i32,
    full_range: bool,
) -> PyResult<()> {
    let (dst, width, height, stride) = View::bgr(out, true)?;
    let y = View::plane(&planes.0, "Y plane", false)?;
    let uv = View::plane(&planes.1, "UV plane", false)?;
    disjoint(&[&dst, &y, &uv])?;
    let src = Nv12 {
        y: (y.slice(), strides.0),
        uv: (uv.slice(), strides.1),
    };
    let d = dst.slice_mut();
    let c = color(colorspace, full_range);
    py.detach(|| pixels::nv12_to_bgr(src, width, height, d, stride, c))
        .map_err(PyValueError::new_err)
}
