//! Does an RTP packet start a keyframe? Read from the payload format's own
//! header, without depacketizing, for the SFU's simulcast switching: a
//! subscriber may only move to another layer at the first packet of one of
//! that layer's keyframes.
//!
//! VP8 is read through [`crate::peer::vp8_header`] (str0m parses its payload
//! descriptor, which the SFU also rewrites); the other codecs are here.

/// Whether `payload` (one RTP payload of `codec`, the signaling name) is the
/// first packet of a keyframe, parameter sets included (H.264's SPS, H.265's
/// VPS), so that a switch there hands the decoder everything it needs.
pub fn starts_keyframe(codec: &str, payload: &[u8]) -> bool {
    match codec {
        "VP8" => crate::peer::vp8_header(payload).is_some_and(|h| h.keyframe),
        "VP9" => vp9(payload),
        "AV1" => av1(payload),
        "H264" => h264(payload),
        "H265" => h265(payload),
        _ => false,
    }
}

/// RFC 6184: a single IDR or SPS NAL unit, a STAP-A holding one, or the
/// first fragment (FU-A, S bit) of an IDR.
fn h264(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&b0) = p.first() else {
        return false;
    };
    match b0 & 0x1f {
        IDR | SPS => true,
        STAP_A => aggregated(&p[1..], |nal| matches!(nal[0] & 0x1f, IDR | SPS)),
        FU_A => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

/// RFC 7798: an IRAP picture (types 16-21) or a VPS, alone, in an
/// aggregation packet (48) or as the first fragment of a fragmentation
/// unit (49).
fn h265(p: &[u8]) -> bool {
    const VPS: u8 = 32;
    const AP: u8 = 48;
    const FU: u8 = 49;
    let irap = |t: u8| (16..=21).contains(&t);
    let Some(&b0) = p.first() else {
        return false;
    };
    match (b0 >> 1) & 0x3f {
        t if irap(t) || t == VPS => true,
        AP => aggregated(p.get(2..).unwrap_or(&[]), |nal| {
            let t = (nal[0] >> 1) & 0x3f;
            irap(t) || t == VPS
        }),
        FU => p.get(2).is_some_and(|fu| fu & 0x80 != 0 && irap(fu & 0x3f)),
        _ => false,
    }
}

/// Walk the 16-bit length-prefixed NAL units of an aggregation packet.
fn aggregated(mut rest: &[u8], is_key: impl Fn(&[u8]) -> bool) -> bool {
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let Some(nal) = rest.get(2..2 + len) else {
            return false;
        };
        if !nal.is_empty() && is_key(nal) {
            return true;
        }
        rest = &rest[2 + len..];
    }
    false
}

/// VP9 payload descriptor: not inter-predicted (P = 0) and the beginning
/// of a frame (B = 1).
fn vp9(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// AV1 aggregation header: N = 1 starts a new coded video sequence, which
/// only a keyframe does.
fn av1(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_forms() {
        assert!(starts_keyframe("H264", &[0x65, 0x88])); // IDR
        assert!(starts_keyframe("H264", &[0x67, 0x42])); // SPS
        assert!(!starts_keyframe("H264", &[0x41, 0x9a])); // non-IDR slice
                                                          // STAP-A with SPS and PPS.
        assert!(starts_keyframe(
            "H264",
            &[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]
        ));
        // STAP-A of SEI only.
        assert!(!starts_keyframe("H264", &[0x78, 0, 2, 0x06, 0x05]));
        // FU-A start and middle of an IDR, start of a P slice.
        assert!(starts_keyframe("H264", &[0x7c, 0x85, 0]));
        assert!(!starts_keyframe("H264", &[0x7c, 0x05, 0]));
        assert!(!starts_keyframe("H264", &[0x7c, 0x81, 0]));
        // Truncated STAP-A does not panic.
        assert!(!starts_keyframe("H264", &[0x78, 0, 9, 0x67]));
    }

    #[test]
    fn h265_forms() {
        assert!(starts_keyframe("H265", &[19 << 1, 1])); // IDR_W_RADL
        assert!(starts_keyframe("H265", &[32 << 1, 1])); // VPS
        assert!(!starts_keyframe("H265", &[1 << 1, 1])); // TRAIL_R
        assert!(starts_keyframe("H265", &[49 << 1, 1, 0x80 | 19]));
        assert!(!starts_keyframe("H265", &[49 << 1, 1, 19]));
        assert!(starts_keyframe("H265", &[48 << 1, 1, 0, 2, 32 << 1, 1]));
    }

    #[test]
    fn vp9_and_av1() {
        assert!(starts_keyframe("VP9", &[0x88]));
        assert!(!starts_keyframe("VP9", &[0xc8])); // inter-predicted
        assert!(!starts_keyframe("VP9", &[0x80])); // not the beginning
        assert!(starts_keyframe("AV1", &[0x18]));
        assert!(!starts_keyframe("AV1", &[0x10]));
        assert!(!starts_keyframe("OPUS", &[0xff]));
        assert!(!starts_keyframe("AV1", &[]));
    }

    #[test]
    fn vp8_through_the_descriptor() {
        // X=1, S=1, PID=0; I=1; 15-bit picture id; then a keyframe header (P=0).
        assert!(starts_keyframe(
            "VP8",
            &[0x90, 0x80, 0x80, 0x01, 0x00, 0, 0]
        ));
        // Same with P=1: a delta frame.
        assert!(!starts_keyframe(
            "VP8",
            &[0x90, 0x80, 0x80, 0x01, 0x01, 0, 0]
        ));
    }
}
