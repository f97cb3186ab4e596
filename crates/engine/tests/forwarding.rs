//! End-to-end through real UDP on loopback: client engine -> SFU shard ->
//! client engine, with the signaling done by hand as the control plane
//! would do it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use engine::client::ClientEngine;
use engine::event::{EngineEvent, EventKind};
use engine::sfu::{ChannelSpec, ConnectionSpec, DataChannelSpec, OpusFmtp, Sfu};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A connection spec with the defaults the tests share: receive only, VP8
/// offered first, no data channels, no simulcast.
fn connection_spec(channel_id: &str, connection_id: impl Into<String>) -> ConnectionSpec {
    ConnectionSpec {
        channel_id: channel_id.into(),
        connection_id: connection_id.into(),
        send_audio: false,
        send_video: false,
        recv: true,
        video_codec: "VP8".into(),
        opus: Default::default(),
        data_channels: Vec::new(),
        simulcast_rids: Vec::new(),
        layer_request: Some(2),
        bandwidth_estimation: false,
        spotlight: None,
    }
}

struct Rig {
    sfu: Sfu,
    client: ClientEngine,
    /// connection_id -> client handle
    handles: HashMap<String, u64>,
    client_events: Vec<EngineEvent>,
    sfu_events: Vec<EngineEvent>,
    /// Connect clients with per-track frame queues.
    route_frames: bool,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            sfu: Sfu::start(LOCALHOST, 0, None, 1).unwrap(),
            client: ClientEngine::start().unwrap(),
            handles: HashMap::new(),
            client_events: Vec::new(),
            sfu_events: Vec::new(),
            route_frames: false,
        }
    }

    fn join(&mut self, id: &str, send: bool, recv: bool) -> (u64, Option<String>, Option<String>) {
        self.join_spec(ConnectionSpec {
            send_audio: send,
            send_video: send,
            recv,
            ..connection_spec("room", id)
        })
    }

    fn join_spec(&mut self, spec: ConnectionSpec) -> (u64, Option<String>, Option<String>) {
        let id = spec.connection_id.clone();
        let created = self.sfu.create_connection(spec).unwrap();
        let id = id.as_str();
        let (h, answer) = self
            .client
            .connect(&created.sdp, self.route_frames)
            .unwrap();
        self.sfu.accept_answer(id, &answer).unwrap();
        self.handles.insert(id.to_string(), h);
        (h, created.audio_mid, created.video_mid)
    }

    /// Pump both queues (answering re-offers) until `done` or the deadline.
    fn pump_until(&mut self, deadline: Duration, mut tick: impl FnMut(&mut Rig) -> bool) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            for e in self.sfu.events().drain(256) {
                if e.kind == EventKind::Offer {
                    let h = self.handles[&*e.connection];
                    let answer = self
                        .client
                        .accept_offer(h, e.sdp.as_ref().unwrap())
                        .unwrap();
                    self.sfu.accept_answer(&e.connection, &answer).unwrap();
                }
                self.sfu_events.push(e);
            }
            self.client_events
                .extend(self.client.events().wait(Duration::from_millis(5), 256));
            if tick(self) {
                return true;
            }
        }
        false
    }

    fn frames_for(&self, handle: u64, media: &str) -> Vec<&EngineEvent> {
        self.client_events
            .iter()
            .filter(|e| {
                e.kind == EventKind::Frame
                    && &*e.connection == handle.to_string()
                    && e.media == Some(media)
            })
            .collect()
    }
}

fn video_frame(n: u32) -> Vec<u8> {
    // A VP8 payload header for a keyframe (bit 0 clear) followed by a body
    // that encodes the frame number, big enough to span several packets.
    let mut v = vec![0x10u8, 0x02, 0x00, 0x9d, 0x01, 0x2a];
    for i in 0..3000u32 {
        v.push(((n.wrapping_mul(31) + i) % 251) as u8);
    }
    v.extend_from_slice(&n.to_be_bytes());
    v
}

#[test]
fn forwards_audio_and_video_content_intact() {
    let mut rig = Rig::new();
    let (pub_h, amid, vmid) = rig.join("PUB", true, false);
    let (sub_h, _, _) = rig.join("SUB", false, true);
    let (amid, vmid) = (amid.unwrap(), vmid.unwrap());

    let mut n = 0u32;
    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        let v = video_frame(n);
        rig.client
            .write_frame(pub_h, &vmid, None, "VP8", &v, n as u64 * 3000, None, None);
        rig.client.write_frame(
            pub_h,
            &amid,
            None,
            "OPUS",
            &[0x78, n as u8, 1, 2, 3],
            n as u64 * 960,
            None,
            Some(-30),
        );
        n += 1;
        rig.frames_for(sub_h, "video").len() >= 30 && rig.frames_for(sub_h, "audio").len() >= 30
    });
    assert!(
        ok,
        "subscriber did not receive 30 audio and 30 video frames"
    );

    // Every video frame arrives whole and in order; its number increases.
    let mut last = None;
    for f in rig.frames_for(sub_h, "video") {
        let data = f.data.as_ref().unwrap();
        assert_eq!(data.len(), 6 + 3000 + 4, "frame reassembled whole");
        let num = u32::from_be_bytes(data[data.len() - 4..].try_into().unwrap());
        assert_eq!(&data[..], &video_frame(num)[..], "payload intact");
        if let Some(l) = last {
            assert!(num > l, "frames in order: {num} after {l}");
        }
        last = Some(num);
    }
    // The audio level the publisher wrote survives the SFU.
    assert!(rig
        .frames_for(sub_h, "audio")
        .iter()
        .all(|f| f.frame.and_then(|m| m.audio_level) == Some(-30)));
    // Track announced with the publisher's connection id as stream id.
    let added: Vec<_> = rig
        .client_events
        .iter()
        .filter(|e| e.kind == EventKind::TrackAdded && &*e.connection == sub_h.to_string())
        .collect();
    assert_eq!(added.len(), 2);
    assert!(added.iter().all(|e| e.stream_id.as_deref() == Some("PUB")));
}

#[test]
fn routed_frames_reach_each_tracks_queue_in_order_until_it_closes() {
    let mut rig = Rig::new();
    rig.route_frames = true;
    let (pub_h, amid, vmid) = rig.join("PUB", true, false);
    let (sub_h, _, _) = rig.join("SUB", false, true);
    let (amid, vmid) = (amid.unwrap(), vmid.unwrap());
    let mut queues = HashMap::new();
    let mut got: HashMap<&'static str, Vec<EngineEvent>> = HashMap::new();
    let mut n = 0u32;
    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        for e in rig
            .client_events
            .iter()
            .filter(|e| e.kind == EventKind::TrackAdded)
        {
            queues
                .entry(e.media.unwrap())
                .or_insert_with(|| e.frames.clone().expect("track_added carries its queue"));
        }
        rig.client.write_frame(
            pub_h,
            &vmid,
            None,
            "VP8",
            &video_frame(n),
            n as u64 * 3000,
            None,
            None,
        );
        rig.client.write_frame(
            pub_h,
            &amid,
            None,
            "OPUS",
            &[0x78, n as u8],
            n as u64 * 960,
            None,
            None,
        );
        n += 1;
        for (media, q) in &queues {
            let batch = q.wait(Duration::ZERO, 64);
            assert!(!batch.closed);
            got.entry(media).or_default().extend(batch.frames);
        }
        got.values().filter(|v| v.len() >= 20).count() == 2
    });
    assert!(ok, "20 audio and 20 video frames through the track queues");
    assert!(
        rig.frames_for(sub_h, "video").is_empty(),
        "no frame on the event queue"
    );
    assert!(rig.frames_for(sub_h, "audio").is_empty());
    let nums: Vec<u32> = got["video"]
        .iter()
        .map(|f| {
            let d = f.data.as_ref().unwrap();
            assert_eq!(
                &d[..],
                &video_frame(u32::from_be_bytes(d[d.len() - 4..].try_into().unwrap()))[..]
            );
            u32::from_be_bytes(d[d.len() - 4..].try_into().unwrap())
        })
        .collect();
    assert!(nums.windows(2).all(|w| w[1] > w[0]), "in order: {nums:?}");
    assert!(got["audio"]
        .iter()
        .all(|f| f.media == Some("audio") && f.mid.as_deref().is_some()));

    // The publisher leaves: its tracks' queues close.
    rig.sfu.close_connection("PUB");
    rig.client.close_connection(pub_h);
    let ok = rig.pump_until(Duration::from_secs(10), |_| {
        queues.values().all(|q| q.is_closed())
    });
    assert!(ok, "queues close with their tracks");
    assert!(queues["video"].wait(Duration::from_secs(1), 8).closed);
}

#[test]
fn leaver_tracks_are_removed_and_garbage_is_ignored() {
    let mut rig = Rig::new();
    let (a, _, _) = rig.join("A", true, true);
    let (b, _, _) = rig.join("B", true, true);
    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        let n = |h: u64| {
            rig.client_events
                .iter()
                .filter(|e| e.kind == EventKind::TrackAdded && &*e.connection == h.to_string())
                .count()
        };
        n(a) == 2 && n(b) == 2
    });
    assert!(ok, "both sides see each other's two tracks");

    // Garbage at the shard's port must not disturb anyone.
    let port = rig.sfu.ports()[0];
    let junk = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let target = SocketAddr::new(LOCALHOST, port);
    for i in 0..200u32 {
        let len = (i as usize * 7) % 1400 + 1;
        let mut d: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
        if i % 3 == 0 {
            d[0] = 0x80; // looks like RTP
        }
        if i % 5 == 0 && d.len() > 8 {
            d[0] = 0;
            d[1] = 1;
            d[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes()); // looks like STUN
        }
        junk.send_to(&d, target).unwrap();
    }

    rig.sfu.close_connection("B");
    rig.client.close_connection(b);
    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        rig.client_events
            .iter()
            .filter(|e| e.kind == EventKind::TrackRemoved && &*e.connection == a.to_string())
            .count()
            == 2
    });
    assert!(ok, "A sees B's two tracks removed");
    let c = &rig.sfu.counters()[0];
    assert!(c.unroutable.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn audio_keeps_flowing_after_senders_drop_the_mid_extension() {
    // Senders stop putting the MID header extension on packets once a
    // receiver report acknowledged the SSRC (audio reports every 5 s); the
    // shard must then route by SSRC.
    let mut rig = Rig::new();
    let (pub_h, amid, _) = rig.join("PUB", true, false);
    let (sub_h, _, _) = rig.join("SUB", false, true);
    let amid = amid.unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    let mut next = Instant::now();
    let ok = rig.pump_until(Duration::from_secs(20), |rig| {
        if Instant::now() >= next {
            rig.client.write_frame(
                pub_h,
                &amid,
                None,
                "OPUS",
                &[0x78, n as u8, 1, 2],
                n * 960,
                None,
                None,
            );
            n += 1;
            next += Duration::from_millis(20);
        }
        // 8 s of 20 ms packets: well past the first receiver report.
        rig.frames_for(sub_h, "audio").len() >= 400
    });
    assert!(
        ok,
        "audio stopped after {:?}: {} frames received",
        start.elapsed(),
        rig.frames_for(sub_h, "audio").len()
    );
}

#[test]
fn offer_lists_the_requested_video_codec_first() {
    let mut sfu = Sfu::start(LOCALHOST, 0, None, 1).unwrap();
    for codec in ["VP8", "VP9", "AV1", "H264", "H265"] {
        let created = sfu
            .create_connection(ConnectionSpec {
                send_video: true,
                recv: false,
                video_codec: codec.into(),
                ..connection_spec("codecs", format!("C-{codec}"))
            })
            .unwrap();
        let sdp = created.sdp;
        let mline = sdp.lines().find(|l| l.starts_with("m=video")).unwrap();
        let first_pt = mline.split_whitespace().nth(3).unwrap();
        let rtpmap = sdp
            .lines()
            .find(|l| l.starts_with(&format!("a=rtpmap:{first_pt} ")))
            .unwrap();
        assert!(
            rtpmap.to_ascii_uppercase().contains(&format!(" {codec}/")),
            "{codec}: first codec is {rtpmap}"
        );
        // The others are still offered so tracks of any codec can be forwarded.
        assert!(sdp.contains("VP8/90000") && sdp.contains("H264/90000"));
    }
}

#[test]
fn opus_params_reach_the_offer_fmtp() {
    let mut sfu = Sfu::start(LOCALHOST, 0, None, 1).unwrap();
    let mut opus_fmtp = |opus: OpusFmtp, id: &str| {
        let sdp = sfu
            .create_connection(ConnectionSpec {
                send_audio: true,
                recv: false,
                opus,
                ..connection_spec("opus", id)
            })
            .unwrap()
            .sdp;
        let pt = sdp
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("opus/48000"))
            .and_then(|l| l.strip_prefix("a=rtpmap:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string();
        sdp.lines()
            .find(|l| l.starts_with(&format!("a=fmtp:{pt} ")))
            .unwrap()
            .to_string()
    };
    let plain = opus_fmtp(OpusFmtp::default(), "O-plain");
    assert!(!plain.contains("stereo=1"), "{plain}");
    let stereo = opus_fmtp(
        OpusFmtp {
            stereo: Some(true),
            sprop_stereo: Some(true),
            use_dtx: Some(true),
            ..Default::default()
        },
        "O-stereo",
    );
    assert!(stereo.contains("stereo=1"), "{stereo}");
    assert!(stereo.contains("sprop-stereo=1"), "{stereo}");
    assert!(stereo.contains("usedtx=1"), "{stereo}");
}

#[test]
fn messaging_channels_are_forwarded_with_header_and_direction() {
    let mut sfu = Sfu::start(LOCALHOST, 0, None, 1).unwrap();
    let client = ClientEngine::start().unwrap();
    let dc = |label: &str, send: bool, recv: bool, header: bool| DataChannelSpec {
        channel: ChannelSpec::reliable(label),
        messaging: label.starts_with('#'),
        send,
        recv,
        header,
        compress: false,
    };
    let mut handles = HashMap::new();
    // A sends on #chat; B receives with the sender header; C only sends.
    let specs = [
        (
            "AAAAAAAAAAAAAAAAAAAAAAAAAA",
            vec![
                dc("signaling", true, true, false),
                dc("#chat", true, true, false),
            ],
        ),
        (
            "BBBBBBBBBBBBBBBBBBBBBBBBBB",
            vec![dc("#chat", true, true, true)],
        ),
        (
            "CCCCCCCCCCCCCCCCCCCCCCCCCC",
            vec![dc("#chat", true, false, false)],
        ),
    ];
    for (id, chans) in specs {
        let created = sfu
            .create_connection(ConnectionSpec {
                data_channels: chans,
                ..connection_spec("dc", id)
            })
            .unwrap();
        let (h, answer) = client.connect(&created.sdp, false).unwrap();
        sfu.accept_answer(id, &answer).unwrap();
        handles.insert(id, h);
    }
    let a = handles["AAAAAAAAAAAAAAAAAAAAAAAAAA"];
    let b = handles["BBBBBBBBBBBBBBBBBBBBBBBBBB"];
    let c = handles["CCCCCCCCCCCCCCCCCCCCCCCCCC"];
    let mut events = Vec::new();
    let mut server_events = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let open = |evs: &Vec<EngineEvent>, h: u64, label: &str| {
        evs.iter().any(|e| {
            e.kind == EventKind::ChannelOpen
                && &*e.connection == h.to_string()
                && e.label.as_deref() == Some(label)
        })
    };
    while !(open(&events, a, "#chat")
        && open(&events, b, "#chat")
        && open(&events, c, "#chat")
        && open(&events, a, "signaling"))
    {
        assert!(Instant::now() < end, "channels did not open");
        events.extend(client.events().wait(Duration::from_millis(10), 256));
        server_events.extend(sfu.events().drain(256));
    }
    assert!(client.send_data(c, "#chat", b"from-c").unwrap());
    assert!(client
        .send_data(a, "signaling", b"{\"type\":\"re-answer\"}")
        .unwrap());
    let got = |evs: &Vec<EngineEvent>, h: u64| -> Vec<Vec<u8>> {
        evs.iter()
            .filter(|e| e.kind == EventKind::ChannelData && &*e.connection == h.to_string())
            .map(|e| e.data.as_ref().unwrap().to_vec())
            .collect()
    };
    while got(&events, b).is_empty()
        || !server_events
            .iter()
            .any(|e: &EngineEvent| e.kind == EventKind::ChannelData)
    {
        assert!(Instant::now() < end, "messages did not arrive");
        events.extend(client.events().wait(Duration::from_millis(10), 256));
        server_events.extend(sfu.events().drain(256));
    }
    // B asked for the header: 26-byte sender id, then the payload.
    assert_eq!(
        got(&events, b),
        vec![b"CCCCCCCCCCCCCCCCCCCCCCCCCCfrom-c".to_vec()]
    );
    // A receives without header; C does not receive (send-only).
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        events.extend(client.events().wait(Duration::from_millis(10), 256));
    }
    assert_eq!(got(&events, a), vec![b"from-c".to_vec()]);
    assert!(got(&events, c).is_empty());
    // System labels go to the control plane instead.
    let sys: Vec<_> = server_events
        .iter()
        .filter(|e| e.kind == EventKind::ChannelData)
        .collect();
    assert_eq!(sys.len(), 1);
    assert_eq!(sys[0].label.as_deref(), Some("signaling"));
    assert_eq!(&*sys[0].connection, "AAAAAAAAAAAAAAAAAAAAAAAAAA");
    // Server -> client on a system label.
    assert!(sfu
        .send_data("AAAAAAAAAAAAAAAAAAAAAAAAAA", "signaling", b"hello")
        .unwrap());
    let end = Instant::now() + Duration::from_secs(5);
    while !got(&events, a).iter().any(|m| m == b"hello") {
        assert!(Instant::now() < end, "server message did not arrive");
        events.extend(client.events().wait(Duration::from_millis(10), 256));
    }
}

#[test]
fn compressed_messaging_is_recompressed_per_receiver_with_header_inside() {
    use std::io::{Read, Write};
    let zlib = |d: &[u8]| {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    let unzlib = |d: &[u8]| {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(d)
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut sfu = Sfu::start(LOCALHOST, 0, None, 1).unwrap();
    let client = ClientEngine::start().unwrap();
    let dc = |header: bool, compress: bool| DataChannelSpec {
        channel: ChannelSpec::reliable("#zip"),
        messaging: true,
        send: true,
        recv: true,
        header,
        compress,
    };
    let ids = [
        "SSSSSSSSSSSSSSSSSSSSSSSSSS",
        "HHHHHHHHHHHHHHHHHHHHHHHHHH",
        "PPPPPPPPPPPPPPPPPPPPPPPPPP",
    ];
    let specs = [dc(false, true), dc(true, true), dc(false, false)];
    let mut handles = Vec::new();
    for (id, spec) in ids.iter().zip(specs) {
        let created = sfu
            .create_connection(ConnectionSpec {
                data_channels: vec![spec],
                ..connection_spec("zip", id.to_string())
            })
            .unwrap();
        let (h, answer) = client.connect(&created.sdp, false).unwrap();
        sfu.accept_answer(id, &answer).unwrap();
        handles.push(h);
    }
    let mut events: Vec<EngineEvent> = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let count =
        |evs: &Vec<EngineEvent>, kind: EventKind| evs.iter().filter(|e| e.kind == kind).count();
    while count(&events, EventKind::ChannelOpen) < 3 {
        assert!(Instant::now() < end, "channels did not open");
        events.extend(client.events().wait(Duration::from_millis(10), 256));
        sfu.events().drain(256);
    }
    assert!(client
        .send_data(handles[0], "#zip", &zlib(b"hello zip"))
        .unwrap());
    // Garbage on a compressed label is dropped, not forwarded.
    assert!(client.send_data(handles[0], "#zip", b"not zlib").unwrap());
    while count(&events, EventKind::ChannelData) < 2 {
        assert!(Instant::now() < end, "messages did not arrive");
        events.extend(client.events().wait(Duration::from_millis(10), 256));
    }
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        events.extend(client.events().wait(Duration::from_millis(10), 256));
    }
    let got = |h: u64| -> Vec<Vec<u8>> {
        events
            .iter()
            .filter(|e| e.kind == EventKind::ChannelData && &*e.connection == h.to_string())
            .map(|e| e.data.as_ref().unwrap().to_vec())
            .collect()
    };
    let h = got(handles[1]);
    assert_eq!(h.len(), 1);
    assert_eq!(
        unzlib(&h[0]),
        b"SSSSSSSSSSSSSSSSSSSSSSSSSShello zip".to_vec()
    );
    assert_eq!(got(handles[2]), vec![b"hello zip".to_vec()]);
}

/// A VP8 frame of simulcast layer `layer`: a keyframe or not, its body
/// saying which layer and frame it is.
fn layer_frame(layer: u8, n: u32, keyframe: bool) -> Vec<u8> {
    let mut v = vec![
        if keyframe { 0x10u8 } else { 0x11 },
        0x02,
        0x00,
        0x9d,
        0x01,
        0x2a,
    ];
    v.extend((0..(600 * (layer as u32 + 1))).map(|i| (i % 251) as u8));
    v.push(layer);
    v.extend_from_slice(&n.to_be_bytes());
    v
}

/// (layer, frame number, keyframe) of a received `layer_frame`.
fn parse_layer_frame(data: &[u8]) -> (u8, u32, bool) {
    let n = u32::from_be_bytes(data[data.len() - 4..].try_into().unwrap());
    (data[data.len() - 5], n, data[0] & 1 == 0)
}

#[test]
fn simulcast_layers_are_selected_switched_on_keyframes_and_fall_back() {
    let mut rig = Rig::new();
    let rids: Vec<String> = ["r0", "r1", "r2"].iter().map(|s| s.to_string()).collect();
    let (pub_h, _, vmid) = rig.join_spec(ConnectionSpec {
        send_video: true,
        recv: false,
        simulcast_rids: rids.clone(),
        ..connection_spec("room", "PUB")
    });
    let vmid = vmid.unwrap();
    let (sub_h, _, _) = rig.join_spec(ConnectionSpec {
        layer_request: Some(0),
        ..connection_spec("room", "SUB")
    });
    assert_eq!(
        rig.client.send_rids(pub_h, &vmid).unwrap(),
        rids,
        "the answer sends r0, r1, r2"
    );

    let mut n = 0u32;
    let paused_top = std::cell::Cell::new(false);
    let mut next = Instant::now();
    let mut send = |rig: &mut Rig| {
        if Instant::now() < next {
            return;
        }
        next += Duration::from_millis(33);
        for (l, rid) in ["r0", "r1", "r2"].iter().enumerate() {
            if l == 2 && paused_top.get() {
                continue;
            }
            // Keyframes every 15 frames, at a different phase per layer, so
            // a switch has to wait for the target's own.
            let key = n < 1 || n % 15 == 5 * l as u32;
            let data = layer_frame(l as u8, n, key);
            rig.client.write_frame(
                pub_h,
                &vmid,
                Some(rid),
                "VP8",
                &data,
                n as u64 * 3000,
                None,
                None,
            );
        }
        n += 1;
    };
    let layers = |rig: &Rig| -> Vec<(u8, u32, bool)> {
        rig.frames_for(sub_h, "video")
            .iter()
            .map(|f| parse_layer_frame(f.data.as_ref().unwrap()))
            .collect()
    };

    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        send(rig);
        layers(rig).len() >= 20
    });
    assert!(ok, "r0 subscriber got {} frames", layers(&rig).len());
    let got = layers(&rig);
    assert!(
        got.iter().all(|(l, _, _)| *l == 0),
        "only r0 forwarded: {got:?}"
    );
    assert!(got[0].2, "the first frame forwarded is a keyframe");

    rig.sfu.set_layer("SUB", None, Some(2)).unwrap();
    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        send(rig);
        layers(rig).iter().filter(|(l, _, _)| *l == 2).count() >= 20
    });
    assert!(ok, "switched to r2: {:?}", layers(&rig));
    let got = layers(&rig);
    let first_top = got.iter().position(|(l, _, _)| *l == 2).unwrap();
    assert!(got[first_top].2, "the switch happens on an r2 keyframe");
    assert!(got[..first_top].iter().all(|(l, _, _)| *l == 0));
    assert!(
        got[first_top..].iter().all(|(l, _, _)| *l == 2),
        "one switch, no flapping"
    );
    // One continuous stream: frames in capture order (the old layer's
    // picture of the switch instant may precede the new layer's keyframe
    // of the same instant) and every frame whole.
    assert!(
        got.windows(2).all(|w| w[1].1 >= w[0].1),
        "frames in order: {got:?}"
    );
    assert!(rig
        .frames_for(sub_h, "video")
        .iter()
        .all(|f| f.contiguous == Some(true)));
    let switched: Vec<_> = rig
        .sfu_events
        .iter()
        .filter(|e| e.kind == EventKind::LayerSwitched)
        .collect();
    assert!(switched.iter().any(|e| e.rid.as_deref() == Some("r2")
        && e.previous_rid.as_deref() == Some("r0")
        && e.stream_id.as_deref() == Some("PUB")
        && &*e.connection == "SUB"));

    // The publisher stops r2: the subscriber falls back to r1.
    paused_top.set(true);
    let before = layers(&rig).len();
    let ok = rig.pump_until(Duration::from_secs(10), |rig| {
        send(rig);
        layers(rig)[before..]
            .iter()
            .filter(|(l, _, _)| *l == 1)
            .count()
            >= 10
    });
    assert!(ok, "fell back to r1: {:?}", &layers(&rig)[before..]);
}
