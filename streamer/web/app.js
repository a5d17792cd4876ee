// deepfake-monitor web page: classify an uploaded video, watch the live streams.
// Plain JavaScript, no libraries, nothing fetched from outside the service.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "deepfake-monitor-token";
let liveAbort = null;

// ---- access token (DFM_API_TOKEN) -------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken() {
  $("token-box").hidden = false;
  $("token").focus();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token-box").hidden = true;
  loadInfo();
  if (!$("view-live").hidden) startLive();
});

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (res.status === 401) askForToken();
  return res;
}

async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `the service answered ${res.status} ${res.statusText}`;
}

// ---- tabs ---------------------------------------------------------------------------

function show(view) {
  for (const name of ["upload", "live"]) {
    const on = name === view;
    $(`view-${name}`).hidden = !on;
    $(`tab-${name}`).setAttribute("aria-selected", String(on));
  }
  if (view === "live") startLive(); else stopLive();
}
$("tab-upload").addEventListener("click", () => show("upload"));
$("tab-live").addEventListener("click", () => show("live"));

// ---- model and limits -------------------------------------------------------------

async function loadInfo() {
  const res = await api("/v1/info");
  if (!res.ok) return;
  const info = await res.json();
  const mib = Math.floor(info.scan_max_bytes / (1 << 20));
  $("upload-limit").textContent =
    `Up to ${mib} MiB. Windows of ${info.window_frames} frames every ${info.hop_frames} frames at ${info.fps} fps; FAKE from P(FAKE) ≥ ${+info.threshold.toFixed(3)}.`;
  $("model-info").textContent =
    `Model ${info.model.name} ${info.model.version}. ${info.model.training_data || ""}`;
  $("upload-form").dataset.maxBytes = String(info.scan_max_bytes);
}

// ---- upload -------------------------------------------------------------------------

const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  if (ev.dataTransfer.files.length) {
    $("file").files = ev.dataTransfer.files;
    startUpload();
  }
});
$("upload-form").addEventListener("submit", (ev) => { ev.preventDefault(); startUpload(); });

function uploadError(message) {
  const el = $("upload-error");
  el.textContent = message;
  el.hidden = false;
  $("upload-progress").hidden = true;
  $("upload-button").disabled = false;
}

function startUpload() {
  const file = $("file").files[0];
  $("upload-error").hidden = true;
  if (!file) { uploadError("Choose a video file first."); return; }
  const max = Number($("upload-form").dataset.maxBytes || 0);
  if (max && file.size > max) {
    uploadError(`The file is too large: ${(file.size / 1048576).toFixed(1)} MiB, the limit is ${Math.floor(max / 1048576)} MiB.`);
    return;
  }
  resetResult();
  $("upload-button").disabled = true;
  $("upload-progress").hidden = false;
  $("upload-stage").textContent = "Uploading";
  const bar = $("upload-bar");
  bar.value = 0;

  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/v1/scan?name=${encodeURIComponent(file.name)}`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
  xhr.upload.onprogress = (ev) => {
    if (ev.lengthComputable) bar.value = Math.round((100 * ev.loaded) / ev.total);
  };
  xhr.upload.onload = () => { $("upload-stage").textContent = "Scanning"; bar.removeAttribute("value"); };
  let seen = 0;
  const state = { verdicts: [], threshold: 0.5, fps: 30 };
  const consume = () => {
    if (xhr.status !== 200) return;
    const text = xhr.responseText;
    let nl;
    while ((nl = text.indexOf("\n", seen)) >= 0) {
      const line = text.slice(seen, nl);
      seen = nl + 1;
      if (line.trim()) handleEvent(JSON.parse(line), state);
    }
  };
  xhr.onprogress = consume;
  xhr.onload = () => {
    if (xhr.status !== 200) {
      let message = `the service answered ${xhr.status}`;
      try { message = JSON.parse(xhr.responseText).error || message; } catch (_) { /* keep */ }
      if (xhr.status === 401) askForToken();
      uploadError(friendly(xhr.status, message));
      return;
    }
    consume();
    $("upload-progress").hidden = true;
    $("upload-button").disabled = false;
  };
  xhr.onerror = () => uploadError("The upload failed: the service could not be reached.");
  xhr.send(file);
}

function friendly(status, message) {
  if (status === 415) return `Not a video: ${message}`;
  if (status === 413) return `Too large: ${message}`;
  if (status === 503) return `Service busy: ${message}`;
  if (status === 401) return "This service needs an access token: enter it above and try again.";
  return message;
}

function resetResult() {
  $("result").hidden = true;
  $("top").hidden = true;
  $("timeline").replaceChildren();
  $("crops").replaceChildren();
  $("overall").textContent = "";
  $("overall").className = "overall";
  $("overall-detail").textContent = "";
  $("timeline-text").textContent = "";
  $("heatmap").hidden = true;
  $("heatmap-title").hidden = true;
}

function handleEvent(ev, state) {
  if (ev.event === "started") {
    state.threshold = ev.threshold;
    $("result").hidden = false;
    $("overall").textContent = "Scanning…";
    drawTimeline(state);
  } else if (ev.event === "verdict") {
    state.verdicts.push(ev.verdict);
    drawTimeline(state);
  } else if (ev.event === "done") {
    showDone(ev, state);
  } else if (ev.event === "error") {
    uploadError(ev.error);
  }
}

function drawTimeline(state, svg = $("timeline"), caption = $("timeline-text")) {
  const W = 600, H = 200, pad = 24;
  svg.replaceChildren();
  const points = state.verdicts.filter((v) => v.score !== null);
  // Each point sits at its window's end, so the axis starts where the first window ends
  // (5 s into a video at the default 150 frames), not at 0 with nothing before it.
  const ends = state.verdicts.map((v) => v.window.end_pts_s);
  const start = ends.length ? Math.min(...ends) : 0;
  const end = Math.max(start + 1, ...ends);
  const x = (t) => pad + ((W - 2 * pad) * (t - start)) / (end - start);
  const y = (p) => H - pad - (H - 2 * pad) * p;
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  add("line", { x1: pad, x2: W - pad, y1: y(0), y2: y(0), class: "axis" });
  add("line", { x1: pad, x2: W - pad, y1: y(state.threshold), y2: y(state.threshold), class: "threshold" });
  add("text", { x: W - pad, y: y(state.threshold) - 4, class: "label", "text-anchor": "end" }, `threshold ${+state.threshold.toFixed(3)}`);
  add("text", { x: 2, y: y(1) + 4, class: "label" }, "1");
  add("text", { x: 2, y: y(0) + 4, class: "label" }, "0");
  const step = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]
    .find((s) => (end - start) / s <= 6) || 7200;
  const first = Math.ceil(start / step - 1e-9);
  for (let i = first; i * step <= end + 1e-9; i++) {
    const t = i * step;
    add("line", { x1: x(t), x2: x(t), y1: y(0), y2: y(0) + 4, class: "axis" });
    const seconds = Number(t.toFixed(1));
    add("text", { x: x(t), y: H - 6, class: "label tick", "text-anchor": "middle" }, `${seconds} s`);
  }
  if (points.length > 1) {
    add("polyline", {
      points: points.map((v) => `${x(v.window.end_pts_s)},${y(v.score)}`).join(" "),
      class: "trace",
    });
  }
  for (const v of points) {
    const fake = v.score >= state.threshold;
    const dot = add("circle", { cx: x(v.window.end_pts_s), cy: y(v.score), r: 5, class: `point ${fake ? "fake" : "real"}` });
    const title = document.createElementNS(SVG, "title");
    title.textContent = `window ${v.seq} ending at ${v.window.end_pts_s.toFixed(1)} s: P(FAKE) ${v.score.toFixed(3)}`;
    dot.appendChild(title);
  }
  const noFace = state.verdicts.length - points.length;
  caption.textContent =
    `${state.verdicts.length} window${state.verdicts.length === 1 ? "" : "s"} scored` +
    (noFace ? `, ${noFace} without a face` : "") + "; each point sits at its window's end.";
}

function showDone(ev, state) {
  const overall = $("overall");
  if (ev.label === "NO_FACE") {
    overall.textContent = "No face found";
    overall.className = "overall noface";
    $("overall-detail").textContent =
      "No window of this video showed a face the detector could find, so there is nothing to classify.";
  } else {
    overall.textContent = ev.label;
    overall.className = `overall ${ev.label === "FAKE" ? "fake" : "real"}`;
    $("overall-detail").textContent =
      `Highest P(FAKE) ${ev.max_score.toFixed(3)} over ${ev.windows} window${ev.windows === 1 ? "" : "s"} ` +
      `(${ev.frames} frames); FAKE when any window reaches ${+state.threshold.toFixed(3)}.`;
  }
  if (ev.top) {
    $("top").hidden = false;
    const crops = $("crops");
    ev.top.crops.forEach((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = `face crop ${i + 1} of window ${ev.top.seq}`;
      crops.appendChild(img);
    });
    if (ev.top.heatmap) {
      $("heatmap").src = ev.top.heatmap;
      $("heatmap").hidden = false;
      $("heatmap-title").hidden = false;
    }
  }
}

// ---- live streams -------------------------------------------------------------------

function stopLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = null;
}

async function startLive() {
  stopLive();
  const controller = new AbortController();
  liveAbort = controller;
  while (!controller.signal.aborted) {
    try {
      const res = await api("/v1/events", { signal: controller.signal });
      if (res.status === 401) { $("live-status").textContent = "Waiting for the access token."; return; }
      if (!res.ok) throw new Error(await errorText(res));
      $("live-status").textContent = "Live.";
      await readEvents(res.body, (name, data) => { if (name === "streams") renderStreams(JSON.parse(data).streams); });
    } catch (err) {
      if (controller.signal.aborted) return;
      $("live-status").textContent = `Connection lost (${err.message}); retrying…`;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// Server-Sent Events read with fetch, so the request can carry the bearer token.
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

function renderStreams(streams) {
  const list = $("streams");
  const seen = new Set();
  for (const s of streams) {
    seen.add(s.id);
    let item = list.querySelector(`li[data-id="${CSS.escape(s.id)}"]`);
    if (!item) {
      item = document.createElement("li");
      item.dataset.id = s.id;
      item.className = "stream";
      item.innerHTML = `
        <div class="stream-head">
          <strong class="stream-id"></strong>
          <span class="state"></span>
          <span class="stream-label"></span>
          <button type="button" class="remove">Remove</button>
        </div>
        <p class="stream-url hint"></p>
        <svg class="sparkline" viewBox="0 0 240 48" preserveAspectRatio="none" role="img"></svg>
        <p class="stream-reason error" hidden></p>
        <figure class="evidence" hidden>
          <img alt="">
          <figcaption></figcaption>
        </figure>`;
      item.querySelector(".stream-id").textContent = s.id;
      item.querySelector(".remove").setAttribute("aria-label", `Remove stream ${s.id}`);
      item.querySelector(".remove").addEventListener("click", () => removeStream(s.id));
      list.appendChild(item);
    }
    item.querySelector(".stream-url").textContent = s.url;
    const state = item.querySelector(".state");
    state.textContent = s.state;
    state.className = `state ${s.state}`;
    const label = item.querySelector(".stream-label");
    label.textContent = s.label ? `${s.label}${s.score !== null ? ` ${s.score.toFixed(2)}` : ""}` : "no verdict yet";
    label.className = `stream-label ${s.label ? s.label.toLowerCase() : ""}`;
    const reason = item.querySelector(".stream-reason");
    reason.hidden = !s.reason;
    reason.textContent = s.reason || "";
    drawSparkline(item.querySelector(".sparkline"), s);
    showEvidence(item.querySelector(".evidence"), s);
  }
  for (const item of [...list.children]) if (!seen.has(item.dataset.id)) item.remove();
  $("live-status").textContent = streams.length ? `Live: ${streams.length} stream${streams.length === 1 ? "" : "s"}.` : "Live: no streams yet; add one with the form above.";
}

// The newest evidence record of a FAKE stream: its contact sheet (crops over heat maps),
// fetched with the token (an <img src> could not carry it) when the record changes.
async function showEvidence(figure, s) {
  const url = s.evidence || "";
  if (figure.dataset.url === url) return;
  figure.dataset.url = url;
  const img = figure.querySelector("img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  if (!url) { figure.hidden = true; img.removeAttribute("src"); return; }
  const res = await api(`${url}/sheet.jpg`);
  if (!res.ok || figure.dataset.url !== url) return;
  img.src = URL.createObjectURL(await res.blob());
  img.alt = `What the model saw when ${s.id} turned FAKE: face crops and their heat maps`;
  const id = url.split("/").pop();
  figure.querySelector("figcaption").textContent = `Evidence ${id}: face crops across the window that turned FAKE, their Grad-CAM heat maps below (GET ${url}).`;
  figure.hidden = false;
}

function drawSparkline(svg, s) {
  const W = 240, H = 48;
  const scores = s.scores.filter((v) => v !== null);
  svg.replaceChildren();
  svg.setAttribute("aria-label", `${scores.length} recent scores of ${s.id}`);
  svg.dataset.points = String(scores.length);
  const line = document.createElementNS(SVG, "line");
  const ty = H - H * s.threshold;
  Object.entries({ x1: 0, x2: W, y1: ty, y2: ty, class: "threshold" }).forEach(([k, v]) => line.setAttribute(k, v));
  svg.appendChild(line);
  if (!scores.length) return;
  const step = scores.length > 1 ? W / (scores.length - 1) : 0;
  const poly = document.createElementNS(SVG, "polyline");
  poly.setAttribute("points", scores.map((v, i) => `${i * step},${H - H * v}`).join(" "));
  poly.setAttribute("class", "trace");
  svg.appendChild(poly);
}

$("add-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = $("add-error");
  err.hidden = true;
  const id = $("stream-id").value.trim();
  const url = $("stream-url").value.trim();
  let problem = null;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) problem = "The stream id must be 1-64 letters, digits, '.', '_' or '-'.";
  else if (!/^rtsps?:\/\/[^\s/]+/.test(url)) problem = "The URL must start with rtsp:// or rtsps:// and name a host.";
  if (problem) { err.textContent = problem; err.hidden = false; return; }
  const res = await api("/v1/streams", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id, url }),
  });
  if (!res.ok) { err.textContent = await errorText(res); err.hidden = false; return; }
  $("stream-id").value = "";
  $("stream-url").value = "";
});

async function removeStream(id) {
  const res = await api(`/v1/streams/${encodeURIComponent(id)}`, { method: "DELETE" });
  if (!res.ok && res.status !== 404) {
    $("add-error").textContent = await errorText(res);
    $("add-error").hidden = false;
  }
}

// ---- check my camera: publish over WHIP, watch its verdicts --------------------------

const camera = { pc: null, media: null, location: null, id: null, timer: null, threshold: 0.5 };

function cameraStatus(text) { $("camera-status").textContent = text; }

function cameraError(text) {
  $("camera-error").textContent = text;
  $("camera-error").hidden = !text;
}

function cameraButtons(running) {
  $("camera-start").hidden = running;
  $("screen-start").hidden = running;
  $("camera-stop").hidden = !running;
}

// All ICE candidates in the offer: WHIP here answers once, with no trickle.
function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

async function startCamera(screen) {
  cameraError("");
  if (!navigator.mediaDevices || !window.RTCPeerConnection) {
    cameraError("This browser cannot publish video (no WebRTC or camera access on this page; use https or localhost).");
    return;
  }
  cameraButtons(true);
  cameraStatus(screen ? "Asking to share a screen…" : "Asking for the camera…");
  try {
    camera.media = screen
      ? await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: false })
      : await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    cameraButtons(false);
    cameraStatus("");
    cameraError(`No video: ${err.message || err.name}.`);
    return;
  }
  $("camera-preview").srcObject = camera.media;
  $("camera-view").hidden = false;
  camera.id = `${screen ? "screen" : "camera"}-${Math.random().toString(16).slice(2, 8)}`;
  const pc = new RTCPeerConnection();
  camera.pc = pc;
  for (const track of camera.media.getVideoTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [camera.media] });
    track.addEventListener("ended", () => stopCamera("The shared video ended."));
  }
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") cameraStatus(`Publishing as stream ${camera.id}; the first verdict comes after one window.`);
    if (pc.connectionState === "failed") stopCamera("The WebRTC connection failed (is UDP to the service blocked?).");
  });
  cameraStatus("Connecting…");
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, 3000);
  const res = await api(`/v1/whip/${encodeURIComponent(camera.id)}`, {
    method: "POST",
    headers: { "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp,
  });
  if (res.status !== 201) {
    const why = await errorText(res);
    await stopCamera("");
    cameraError(`The service did not take the video: ${why}`);
    return;
  }
  camera.location = res.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  camera.timer = setInterval(pollCamera, 1000);
}

async function pollCamera() {
  const id = camera.id;
  if (!id) return;
  const res = await api(`/v1/streams/${encodeURIComponent(id)}/verdicts?limit=120`);
  if (!res.ok || camera.id !== id) return;  // stopped meanwhile: leave its status alone
  const body = await res.json();
  if (camera.id !== id) return;
  const verdicts = body.verdicts;
  if (verdicts.length) camera.threshold = verdicts[verdicts.length - 1].threshold;
  drawTimeline({ verdicts, threshold: camera.threshold }, $("camera-timeline"), $("camera-timeline-text"));
  $("camera-timeline").dataset.points = String(verdicts.length);
  const last = verdicts[verdicts.length - 1];
  if (last) {
    const score = last.score === null ? "" : ` (P(FAKE) ${last.score.toFixed(2)})`;
    cameraStatus(`Stream ${camera.id}: latest window ${last.label === "NO_FACE" ? "has no face" : last.label}${score}.`);
  }
}

async function stopCamera(message) {
  clearInterval(camera.timer);
  camera.timer = null;
  const location = camera.location;
  camera.location = null;
  if (location) await api(location, { method: "DELETE" }).catch(() => {});
  if (camera.pc) camera.pc.close();
  if (camera.media) for (const track of camera.media.getTracks()) track.stop();
  camera.pc = camera.media = null;
  camera.id = null;
  cameraButtons(false);
  cameraStatus(message === undefined ? "Stopped; the stream is removed." : message);
}

$("camera-start").addEventListener("click", () => startCamera(false));
$("screen-start").addEventListener("click", () => startCamera(true));
$("camera-stop").addEventListener("click", () => stopCamera());
window.addEventListener("pagehide", () => { if (camera.location) stopCamera(); });

loadInfo();
