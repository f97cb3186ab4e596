// Hibiki web client: Sora signaling over WebSocket (and the DataChannels the
// server opens), the browser's own RTCPeerConnection, no build step.
//
// Test hooks on window.hibiki: join(opts), leave(), sendChat(text), chatLog,
// stats(), state, connectionId, tiles(), grabFrame(streamId).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const SENDER_HEADER_BYTES = 26;

  const state = {
    phase: "idle", // idle | connecting | connected | closed | error
    ws: null,
    pc: null,
    connectionId: null,
    clientId: null,
    channelId: null,
    role: null,
    switched: false,
    dcs: {}, // label -> RTCDataChannel
    dcInfo: {}, // label -> entry of offer.data_channels
    localStream: null,
    participants: new Map(), // connection_id -> {client_id, audio, video}
    tiles: new Map(), // stream id (sender connection_id) -> tile
    streamOfTrack: new Map(), // track id -> stream id
    chatLog: [],
    lastError: null,
    events: [],
    statsTimer: null,
    prevBytes: new Map(), // stats id -> {bytes, ts}
    tileStats: {},
    pendingCandidates: [],
  };

  function log(...args) {
    state.events.push(args.map(String).join(" "));
    if (state.events.length > 200) state.events.shift();
    console.log("[hibiki]", ...args);
  }

  function setPhase(phase, text) {
    state.phase = phase;
    const el = $("status");
    el.dataset.state = phase;
    el.textContent = text || phase;
    const busy = phase === "connecting" || phase === "connected";
    $("join").disabled = busy;
    $("leave").disabled = !busy;
    $("chat-input").disabled = phase !== "connected";
    $("chat-send").disabled = phase !== "connected";
  }

  // -- compression (zlib, RFC 1950 == CompressionStream "deflate") ------------------

  async function pipeBytes(bytes, stream) {
    const out = new Blob([bytes]).stream().pipeThrough(stream);
    return new Uint8Array(await new Response(out).arrayBuffer());
  }
  const inflate = (b) => pipeBytes(b, new DecompressionStream("deflate"));
  const deflate = (b) => pipeBytes(b, new CompressionStream("deflate"));

  function toBytes(data) {
    if (typeof data === "string") return enc.encode(data);
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }

  async function dcSend(label, payload) {
    const dc = state.dcs[label];
    if (!dc || dc.readyState !== "open") return false;
    let bytes = typeof payload === "string" ? enc.encode(payload) : payload;
    if (state.dcInfo[label] && state.dcInfo[label].compress) bytes = await deflate(bytes);
    dc.send(bytes);
    return true;
  }

  // -- signaling ------------------------------------------------------------------------

  function wsSend(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  // re-answer, disconnect: on the signaling DataChannel once switched, else WS.
  async function signal(msg) {
    if (state.switched && (await dcSend("signaling", JSON.stringify(msg)))) return;
    wsSend(msg);
  }

  function signalingUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/signaling`;
  }

  const CODEC_MIME = { vp8: "video/VP8", vp9: "video/VP9", h264: "video/H264", av1: "video/AV1" };
  const CODEC_TYPE = { vp8: "VP8", vp9: "VP9", h264: "H264", av1: "AV1" };

  async function join(opts = {}) {
    if (state.phase === "connecting" || state.phase === "connected") throw new Error("already joined");
    const channel = opts.channel || $("channel").value.trim();
    if (!channel) throw new Error("a channel name is needed");
    const role = opts.role || $("role").value || "sendrecv";
    const codec = (opts.video || opts.codec || $("codec").value || "").toLowerCase();
    Object.assign(state, {
      channelId: channel, role, switched: false, dcs: {}, dcInfo: {}, connectionId: null,
      clientId: null, lastError: null, pendingCandidates: [], codec,
    });
    state.participants.clear();
    $("channel").value = channel;
    $("role").value = role;
    $("codec").value = codec in CODEC_MIME ? codec : "";
    setPhase("connecting", `joining ${channel}…`);

    const sending = role !== "recvonly";
    const wantAudio = opts.audio !== false;
    const wantVideo = opts.camera !== false;
    if (sending && (wantAudio || wantVideo)) {
      try {
        state.localStream = await navigator.mediaDevices.getUserMedia({
          audio: wantAudio,
          video: wantVideo ? (opts.videoConstraints || { width: 640, height: 480 }) : false,
        });
      } catch (e) {
        setPhase("error", `camera/microphone: ${e.message}`);
        state.lastError = String(e);
        throw e;
      }
      addTile("local", state.localStream, true);
    }

    const connect = {
      type: "connect",
      role,
      channel_id: channel,
      multistream: true,
      sora_client: "Hibiki web",
      environment: navigator.userAgent,
      audio: true,
      video: codec in CODEC_TYPE ? { codec_type: CODEC_TYPE[codec] } : true,
      data_channel_signaling: true,
      ignore_disconnect_websocket: false,
      data_channels: [{ label: "#chat", direction: "sendrecv", header: [{ type: "sender_connection_id" }] }],
    };
    if (opts.clientId) connect.client_id = opts.clientId;
    if (opts.metadata !== undefined) connect.metadata = opts.metadata;
    // Simulcast: the camera goes out as r0/r1/r2; a receiver gets simulcastRid.
    if (opts.simulcast) connect.simulcast = true;
    if (opts.simulcastRid) connect.simulcast_rid = opts.simulcastRid;
    // A server with an API secret wants a user token (hibiki.api create_token / POST /v1/tokens).
    const token = opts.token || new URLSearchParams(location.search).get("token");
    if (token) connect.metadata = Object.assign({}, connect.metadata || {}, { access_token: token });

    const ws = new WebSocket(opts.signalingUrl || signalingUrl());
    state.ws = ws;
    ws.onopen = () => wsSend(connect);
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      handleSignal(msg, "ws").catch((e) => fail(e));
    };
    ws.onclose = (ev) => {
      log("ws close", ev.code, ev.reason);
      if (state.ws !== ws) return;
      if (state.phase === "connecting" || state.phase === "connected") {
        const clean = ev.code === 1000;
        teardown();
        setPhase(clean ? "closed" : "error", clean ? "left" : `closed: ${ev.code} ${ev.reason}`);
        if (!clean) state.lastError = `ws close ${ev.code} ${ev.reason}`;
      }
    };
    return new Promise((resolve, reject) => {
      const t0 = Date.now();
      const check = () => {
        if (state.phase === "connected") resolve(state.connectionId);
        else if (state.phase === "error" || state.phase === "closed") reject(new Error(state.lastError || state.phase));
        else if (Date.now() - t0 > (opts.timeout || 15000)) reject(new Error("join timed out"));
        else setTimeout(check, 50);
      };
      check();
    });
  }

  function fail(e) {
    log("error", e && e.stack ? e.stack : e);
    state.lastError = String(e);
  }

  async function handleSignal(msg, via) {
    switch (msg.type) {
      case "offer": return onOffer(msg);
      case "re-offer": return onReOffer(msg);
      case "ping": {
        const pong = { type: "pong" };
        if (msg.stats) pong.stats = await rawStats();
        wsSend(pong);
        return;
      }
      case "req-stats":
        await dcSend("stats", JSON.stringify({ type: "stats", reports: await rawStats() }));
        return;
      case "switched":
        state.switched = true;
        log("switched", via);
        return;
      case "notify": return onNotify(msg);
      case "push": log("push", JSON.stringify(msg.data)); return;
      case "close":
        log("close", msg.code, msg.reason);
        return;
      case "redirect":
        state.lastError = "redirect is not supported by this page";
        return;
      default:
        log("unhandled", via, msg.type);
    }
  }

  async function onOffer(msg) {
    state.connectionId = msg.connection_id;
    state.clientId = msg.client_id || msg.connection_id;
    for (const dc of msg.data_channels || []) state.dcInfo[dc.label] = dc;
    const pc = new RTCPeerConnection(msg.config || {});
    state.pc = pc;
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return;
      wsSend(Object.assign({ type: "candidate" }, ev.candidate.toJSON()));
    };
    pc.ontrack = (ev) => onTrack(ev);
    pc.ondatachannel = (ev) => onDataChannel(ev.channel);
    pc.onconnectionstatechange = () => {
      log("pc", pc.connectionState);
      if (pc.connectionState === "failed") { state.lastError = "peer connection failed"; setPhase("error", "connection failed"); }
      maybeConnected();
    };
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    // Like sora-js-sdk: tracks are added after setRemoteDescription, so they
    // take the transceivers of the server's offer (mid.audio / mid.video).
    if (state.localStream) {
      for (const track of state.localStream.getTracks()) pc.addTrack(track, state.localStream);
    }
    if (msg.simulcast && Array.isArray(msg.encodings)) await applyEncodings(pc, msg);
    preferCodec(pc);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    wsSend({ type: "answer", sdp: pc.localDescription.sdp });
    relabelLocal();
    startStats();
  }

  // The offer's simulcast encodings (rid, active, scaleResolutionDownBy,
  // maxBitrate...) onto our video sender, as sora-js-sdk does: the SDP's
  // a=simulcast:recv gave the sender one encoding per rid already.
  async function applyEncodings(pc, msg) {
    const mid = msg.mid && msg.mid.video;
    const t = pc.getTransceivers().find((x) => x.mid === mid);
    if (!t || !t.sender.track) return;
    const params = t.sender.getParameters();
    if (!params.encodings || params.encodings.length !== msg.encodings.length) {
      log("simulcast", "the sender has", (params.encodings || []).length, "encodings for", msg.encodings.length, "rids");
      return;
    }
    params.encodings = params.encodings.map((e, i) => Object.assign({}, e, msg.encodings[i]));
    try {
      await t.sender.setParameters(params);
      log("simulcast", msg.encodings.map((e) => e.rid).join(","));
    } catch (e) {
      log("simulcast setParameters", e);
    }
  }

  function preferCodec(pc) {
    const mime = CODEC_MIME[state.codec];
    if (!mime || !RTCRtpReceiver.getCapabilities) return;
    const caps = RTCRtpReceiver.getCapabilities("video");
    if (!caps) return;
    const preferred = caps.codecs.filter((c) => c.mimeType.toLowerCase() === mime.toLowerCase());
    if (!preferred.length) return;
    const rest = caps.codecs.filter((c) => /rtx|red|ulpfec/i.test(c.mimeType));
    for (const t of pc.getTransceivers()) {
      if (t.receiver.track.kind !== "video" || t.stopped) continue;
      try { t.setCodecPreferences(preferred.concat(rest)); } catch (e) { log("setCodecPreferences", e); }
    }
  }

  async function onReOffer(msg) {
    const pc = state.pc;
    if (!pc) return;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    await signal({ type: "re-answer", sdp: pc.localDescription.sdp });
    reconcileTiles();
  }

  function onNotify(msg) {
    const cid = msg.connection_id;
    if (msg.event_type === "connection.created") {
      for (const d of msg.data || []) {
        if (d.connection_id) state.participants.set(d.connection_id, { client_id: d.client_id || d.connection_id });
      }
      if (cid) state.participants.set(cid, { client_id: msg.client_id || cid, audio: msg.audio, video: msg.video });
      if (cid && cid === state.connectionId) {
        state.selfNotified = true;
        maybeConnected();
      } else if (cid) {
        systemChat(`${msg.client_id || cid} joined`);
      }
      for (const [sid] of state.tiles) relabel(sid);
    } else if (msg.event_type === "call.ended") {
      // The call was ended over the REST API; the server closes us next.
      systemChat("the call was ended");
    } else if (msg.event_type === "connection.destroyed") {
      if (cid && cid !== state.connectionId) {
        systemChat(`${(state.participants.get(cid) || {}).client_id || cid} left`);
        state.participants.delete(cid);
        removeTile(cid);
      }
    }
  }

  function maybeConnected() {
    if (state.phase !== "connecting" || !state.pc) return;
    if (state.pc.connectionState === "connected" && state.selfNotified) {
      setPhase("connected", `connected to ${state.channelId}`);
      systemChat(`joined ${state.channelId} as ${state.clientId}`);
    }
  }

  // -- DataChannels ------------------------------------------------------------------------

  function onDataChannel(dc) {
    dc.binaryType = "arraybuffer";
    state.dcs[dc.label] = dc;
    dc.onmessage = (ev) => onDcMessage(dc.label, ev.data).catch((e) => fail(e));
    dc.onopen = () => log("dc open", dc.label);
    dc.onclose = () => log("dc close", dc.label);
  }

  async function onDcMessage(label, data) {
    let bytes = toBytes(data);
    const info = state.dcInfo[label] || {};
    if (info.compress) bytes = await inflate(bytes);
    if (label.startsWith("#")) {
      let from = null;
      if (info.header && info.header.length && bytes.length >= SENDER_HEADER_BYTES) {
        from = dec.decode(bytes.subarray(0, SENDER_HEADER_BYTES));
        bytes = bytes.subarray(SENDER_HEADER_BYTES);
      }
      if (label === "#chat") addChat(from, dec.decode(bytes), false);
      return;
    }
    if (["signaling", "notify", "push", "stats"].includes(label)) {
      let msg;
      try { msg = JSON.parse(dec.decode(bytes)); } catch { return; }
      await handleSignal(msg, label);
    }
  }

  // -- chat ------------------------------------------------------------------------------------

  function addChat(from, text, mine) {
    const who = mine ? "you" : from ? ((state.participants.get(from) || {}).client_id || from) : "peer";
    const entry = { from: mine ? state.connectionId : from, who, text, mine, time: Date.now() };
    state.chatLog.push(entry);
    const li = document.createElement("li");
    if (mine) li.className = "mine";
    const w = document.createElement("span");
    w.className = "who";
    w.textContent = who;
    li.append(w, document.createTextNode(text));
    $("chat-log").append(li);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
  }

  function systemChat(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    $("chat-log").append(li);
  }

  async function sendChat(text) {
    if (!(await dcSend("#chat", enc.encode(text)))) throw new Error("#chat is not open");
    addChat(null, text, true);
  }

  // -- tiles --------------------------------------------------------------------------------

  function onTrack(ev) {
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    const sid = stream.id;
    state.streamOfTrack.set(ev.track.id, sid);
    log("track", ev.track.kind, sid);
    let tile = state.tiles.get(sid);
    if (!tile) tile = addTile(sid, stream, false);
    else if (tile.stream !== stream) {
      tile.stream.addTrack(ev.track);
    }
    ev.track.onmute = () => updateMute(sid);
    ev.track.onunmute = () => updateMute(sid);
    ev.track.onended = () => reconcileTiles();
    stream.onremovetrack = () => reconcileTiles();
    updateMute(sid);
  }

  function addTile(sid, stream, local) {
    $("empty").hidden = true;
    const el = document.createElement("div");
    el.className = "tile" + (local ? " local" : "");
    el.dataset.stream = sid;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = local;
    video.srcObject = stream;
    const label = document.createElement("div");
    label.className = "label";
    const mute = document.createElement("div");
    mute.className = "mute";
    mute.textContent = "muted";
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = "…";
    el.append(video, label, mute, stats);
    $("grid").append(el);
    video.play().catch(() => {});
    const tile = { sid, el, video, stream, local, labelEl: label, statsEl: stats, muteEl: mute };
    state.tiles.set(sid, tile);
    relabel(sid);
    return tile;
  }

  function relabel(sid) {
    const tile = state.tiles.get(sid);
    if (!tile) return;
    let name, cid;
    if (tile.local) {
      name = state.clientId && state.clientId !== state.connectionId ? `you · ${state.clientId}` : "you";
      cid = state.connectionId || "";
    }
    else { name = (state.participants.get(sid) || {}).client_id || sid; cid = sid; }
    tile.labelEl.innerHTML = "";
    const n = document.createElement("span");
    n.textContent = name + " ";
    const c = document.createElement("span");
    c.className = "cid";
    c.textContent = cid && cid !== name ? cid : "";
    tile.labelEl.append(n, c);
    tile.el.dataset.clientId = tile.local ? state.clientId || "" : name;
  }

  function relabelLocal() { relabel("local"); }

  function updateMute(sid) {
    const tile = state.tiles.get(sid);
    if (!tile) return;
    const audio = tile.stream.getAudioTracks().filter((t) => t.readyState === "live");
    const video = tile.stream.getVideoTracks().filter((t) => t.readyState === "live");
    const audioOff = !audio.length || audio.every((t) => t.muted || !t.enabled);
    const videoOff = !video.length || video.every((t) => t.muted || !t.enabled);
    tile.el.classList.toggle("muted", audioOff);
    tile.muteEl.textContent = audioOff && videoOff ? "muted" : audioOff ? "mic off" : "";
    tile.el.dataset.audioMuted = String(audioOff);
    tile.el.dataset.videoMuted = String(videoOff);
  }

  function removeTile(sid) {
    const tile = state.tiles.get(sid);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.el.remove();
    state.tiles.delete(sid);
    if (!state.tiles.size) $("empty").hidden = false;
  }

  // A stream whose every receiving transceiver went inactive (port 0 in the re-offer) is gone.
  function reconcileTiles() {
    if (!state.pc) return;
    const live = new Set();
    for (const t of state.pc.getTransceivers()) {
      const dir = t.currentDirection;
      if (t.stopped || !(dir === "recvonly" || dir === "sendrecv")) continue;
      const sid = state.streamOfTrack.get(t.receiver.track.id);
      if (sid) live.add(sid);
    }
    for (const [sid, tile] of state.tiles) {
      if (!tile.local && !live.has(sid)) removeTile(sid);
      else updateMute(sid);
    }
  }

  // -- stats ---------------------------------------------------------------------------------

  async function rawStats() {
    if (!state.pc) return [];
    const report = await state.pc.getStats();
    return Array.from(report.values());
  }

  async function stats() {
    const out = { inbound: [], outbound: [], rtt: null, connectionState: state.pc ? state.pc.connectionState : null };
    if (!state.pc) return out;
    const report = await state.pc.getStats();
    const codecs = {};
    report.forEach((s) => { if (s.type === "codec") codecs[s.id] = s.mimeType; });
    report.forEach((s) => {
      if (s.type === "inbound-rtp") {
        out.inbound.push({
          kind: s.kind, mid: s.mid, trackIdentifier: s.trackIdentifier,
          streamId: state.streamOfTrack.get(s.trackIdentifier) || null,
          codec: codecs[s.codecId] || null, bytesReceived: s.bytesReceived, packetsReceived: s.packetsReceived,
          framesDecoded: s.framesDecoded, framesPerSecond: s.framesPerSecond,
          frameWidth: s.frameWidth, frameHeight: s.frameHeight, totalSamplesReceived: s.totalSamplesReceived,
          audioLevel: s.audioLevel, keyFramesDecoded: s.keyFramesDecoded,
        });
      } else if (s.type === "outbound-rtp") {
        out.outbound.push({
          kind: s.kind, mid: s.mid, codec: codecs[s.codecId] || null, bytesSent: s.bytesSent,
          packetsSent: s.packetsSent, framesEncoded: s.framesEncoded, framesPerSecond: s.framesPerSecond,
          frameWidth: s.frameWidth, frameHeight: s.frameHeight, encoderImplementation: s.encoderImplementation,
          rid: s.rid,
        });
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        if (typeof s.currentRoundTripTime === "number") out.rtt = s.currentRoundTripTime;
      }
    });
    return out;
  }

  function startStats() {
    clearInterval(state.statsTimer);
    state.statsTimer = setInterval(() => updateTileStats().catch(() => {}), 1000);
  }

  async function updateTileStats() {
    if (!state.pc) return;
    const report = await state.pc.getStats();
    let rtt = null;
    const perTile = {};
    const now = performance.now();
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && typeof s.currentRoundTripTime === "number") rtt = s.currentRoundTripTime;
    });
    report.forEach((s) => {
      let sid = null, bytes = null;
      if (s.type === "inbound-rtp") { sid = state.streamOfTrack.get(s.trackIdentifier); bytes = s.bytesReceived; }
      else if (s.type === "outbound-rtp") { sid = "local"; bytes = s.bytesSent; }
      if (!sid || bytes == null) return;
      const prev = state.prevBytes.get(s.id);
      state.prevBytes.set(s.id, { bytes, ts: now });
      const t = perTile[sid] || (perTile[sid] = { kbps: null, fps: null, width: null, height: null });
      if (prev && now > prev.ts) t.kbps = (t.kbps || 0) + ((bytes - prev.bytes) * 8) / (now - prev.ts);
      if (s.kind === "video") {
        if (typeof s.framesPerSecond === "number") t.fps = s.framesPerSecond;
        if (s.frameWidth) { t.width = s.frameWidth; t.height = s.frameHeight; }
      }
    });
    state.tileStats = perTile;
    for (const [sid, tile] of state.tiles) {
      const t = perTile[sid];
      if (!t) continue;
      const parts = [t.kbps == null ? "– kbps" : `${Math.round(t.kbps)} kbps`];
      if (t.fps != null) parts.push(`${Math.round(t.fps)} fps`);
      if (t.width) parts.push(`${t.width}×${t.height}`);
      if (rtt != null) parts.push(`rtt ${Math.round(rtt * 1000)} ms`);
      tile.statsEl.textContent = parts.join(" · ");
    }
    for (const [sid] of state.tiles) updateMute(sid);
  }

  // -- leave -------------------------------------------------------------------------------------

  function teardown() {
    clearInterval(state.statsTimer);
    if (state.pc) { state.pc.close(); state.pc = null; }
    if (state.localStream) { state.localStream.getTracks().forEach((t) => t.stop()); state.localStream = null; }
    for (const [sid] of Array.from(state.tiles)) removeTile(sid);
    state.streamOfTrack.clear();
    state.switched = false;
    state.selfNotified = false;
  }

  async function leave() {
    const ws = state.ws;
    if (!ws) return;
    await signal({ type: "disconnect", reason: "NO-ERROR" });
    // The server closes the WebSocket with 1000 TYPE-DISCONNECT; don't wait forever.
    await new Promise((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) return resolve();
      const timer = setTimeout(resolve, 3000);
      ws.addEventListener("close", () => { clearTimeout(timer); resolve(); });
    });
    state.ws = null;
    if (ws.readyState !== WebSocket.CLOSED) ws.close(1000);
    teardown();
    setPhase("closed", "left");
    systemChat("left the channel");
  }

  // For tests: the current picture of a tile's <video> as RGBA (base64), full size.
  function grabFrame(sid) {
    const tile = state.tiles.get(sid);
    if (!tile) return null;
    const v = tile.video;
    if (!v.videoWidth) return null;
    const canvas = document.createElement("canvas");
    canvas.width = v.videoWidth;
    canvas.height = v.videoHeight;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(v, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let bin = "";
    const CH = 0x8000;
    for (let i = 0; i < data.length; i += CH) bin += String.fromCharCode.apply(null, data.subarray(i, i + CH));
    return { width: canvas.width, height: canvas.height, rgba: btoa(bin) };
  }

  // -- UI --------------------------------------------------------------------------------------------

  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    join().catch((e) => fail(e));
  });
  $("leave").addEventListener("click", () => leave().catch((e) => fail(e)));
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (!text) return;
    sendChat(text).then(() => { input.value = ""; }).catch((e) => fail(e));
  });
  setPhase("idle", "not connected");

  window.hibiki = {
    join, leave, sendChat, stats, grabFrame,
    get state() { return state.phase; },
    get connectionId() { return state.connectionId; },
    get clientId() { return state.clientId; },
    get chatLog() { return state.chatLog; },
    get lastError() { return state.lastError; },
    get events() { return state.events; },
    get tileStats() { return state.tileStats; },
    tiles() { return Array.from(state.tiles.keys()); },
    _state: state,
  };

  const q = new URLSearchParams(location.search);
  if (q.get("channel")) $("channel").value = q.get("channel");
  if (q.get("role")) $("role").value = q.get("role");
  if (q.get("video")) $("codec").value = q.get("video").toLowerCase();
  if (q.get("autojoin") === "1" && q.get("channel")) {
    join({ channel: q.get("channel"), role: q.get("role") || undefined, video: q.get("video") || undefined,
           clientId: q.get("client_id") || undefined, simulcast: q.get("simulcast") === "1",
           simulcastRid: q.get("simulcast_rid") || undefined,
           videoConstraints: q.get("hd") === "1" ? { width: 1280, height: 720 } : undefined }).catch((e) => fail(e));
  }
})();
