// fgp stream page: webcam frames out as JPEG, rendered frames back, sliders as live edits.
// Message format: fgp_fast/stream/protocol.py. At most MAX_IN_FLIGHT frames are outstanding; camera
// frames that arrive meanwhile are skipped, so the page never builds a backlog (latest frame wins).
"use strict";

const MAX_IN_FLIGHT = 2;
const SEND_SIDE = 256;                  // driver frames are scaled so their longer side is this
const FEATURED = ["jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp",
                  "mouthPucker", "mouthFunnel", "cheekPuff"];
const $ = (id) => document.getElementById(id);

const stats = { sent: 0, received: 0, dropped: 0, errors: [], fps: 0, latency: 0, face: false };
const sentAt = new Map();               // frame id -> performance.now() at send
const arrivals = [];                    // receive times of the last second, for the fps readout
const edits = {};
let socket = null, nextId = 0, inFlight = 0;

function pack(header, payload) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + head.length + payload.byteLength);
  new DataView(out.buffer).setUint32(0, head.length);
  out.set(head, 4);
  out.set(new Uint8Array(payload), 4 + head.length);
  return out.buffer;
}

function unpack(buffer) {
  const n = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  return [header, new Blob([new Uint8Array(buffer, 4 + n)], { type: "image/" + (header.format || "jpeg") })];
}

function status(text) { $("status").textContent = text; }

function connect() {
  // With --token, the first load of /?token=... left an HttpOnly cookie that the socket carries.
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => (typeof event.data === "string" ? onControl(JSON.parse(event.data)) : onFrame(event.data));
  socket.onclose = (event) => { status(`disconnected (${event.code} ${event.reason || ""}); reload to reconnect`); socket = null; };
}

function onControl(message) {
  if (message.type === "ready") {
    buildSliders(message);
    status(`ready: ${message.renderer} renderer, ${message.size[1]}×${message.size[0]}, ${message.mode} driving`);
  } else if (message.type === "error") {
    stats.errors.push(message.message);
    status("server: " + message.message);
    settle(message.id);
  } else if (message.type === "dropped") {
    stats.dropped += 1;
    $("dropped").textContent = `dropped ${stats.dropped}`;
    settle(message.id);
  }
}

function settle(id) {
  if (id !== null && id !== undefined && sentAt.delete(id)) inFlight -= 1;
}

async function onFrame(buffer) {
  const [header, blob] = unpack(buffer);
  const now = performance.now();
  const t0 = sentAt.get(header.id);
  settle(header.id);
  if (t0 !== undefined) stats.latency = stats.latency ? 0.8 * stats.latency + 0.2 * (now - t0) : now - t0;
  arrivals.push(now);
  while (arrivals.length && arrivals[0] < now - 1000) arrivals.shift();
  stats.fps = arrivals.length;
  stats.received += 1;
  stats.face = header.face;
  const bitmap = await createImageBitmap(blob);
  const canvas = $("output");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width; canvas.height = bitmap.height;
  }
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  $("fps").textContent = `fps ${stats.fps.toFixed(0)}`;
  $("latency").textContent = `latency ${stats.latency.toFixed(0)} ms` + (header.face ? "" : " (no face)");
}

function slider(parent, name, min, max, step) {
  const label = document.createElement("label");
  label.className = "slider";
  label.innerHTML = `<span>${name}</span><input type="range" min="${min}" max="${max}" step="${step}" value="0"><output>0</output>`;
  const input = label.querySelector("input"), out = label.querySelector("output");
  input.dataset.edit = name;
  input.oninput = () => {
    out.textContent = input.value;
    edits[name] = Number(input.value);
    send(JSON.stringify({ type: "edits", edits }));
  };
  parent.appendChild(label);
}

function buildSliders(ready) {
  for (const id of ["pose", "expressions", "more"]) $(id).textContent = "";
  for (const k of Object.keys(edits)) delete edits[k];
  for (const name of ready.angles) slider($("pose"), name, -45, 45, 1);
  for (const name of ready.expressions) {
    slider(FEATURED.includes(name) ? $("expressions") : $("more"), name, -1, 1, 0.05);
  }
}

function send(data) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
}

async function startCamera() {
  const video = $("camera");
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    status("no camera: " + err.message);
    return;
  }
  await video.play();
  const grab = document.createElement("canvas");
  const tick = () => {
    if (socket && socket.readyState === WebSocket.OPEN && inFlight < MAX_IN_FLIGHT && video.videoWidth) {
      const s = SEND_SIDE / Math.max(video.videoWidth, video.videoHeight);
      grab.width = Math.round(video.videoWidth * s); grab.height = Math.round(video.videoHeight * s);
      grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
      const id = nextId++;
      inFlight += 1;
      sentAt.set(id, performance.now());
      grab.toBlob(async (blob) => {
        if (!blob) { settle(id); return; }
        send(pack({ type: "frame", id, t: Date.now() }, await blob.arrayBuffer()));
        stats.sent += 1;
      }, "image/jpeg", 0.85);
    }
    // Frames sent before a reset or reconnect that never come back must not block sending forever.
    for (const [id, t] of sentAt) if (performance.now() - t > 5000) settle(id);
    video.requestVideoFrameCallback ? video.requestVideoFrameCallback(tick) : setTimeout(tick, 33);
  };
  tick();
}

$("reset").onclick = () => send(JSON.stringify({ type: "reset" }));
$("zero").onclick = () => {
  for (const input of document.querySelectorAll("input[data-edit]")) { input.value = 0; input.nextSibling.textContent = "0"; }
  for (const k of Object.keys(edits)) delete edits[k];
  send(JSON.stringify({ type: "edits", edits: {} }));
};
$("source").onchange = async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  status("fitting the new portrait…");
  send(pack({ type: "source" }, await file.arrayBuffer()));
};

// For scripts and tests: the live counters and a summary of the rendered canvas.
window.fgp = {
  stats,
  canvasSummary() {
    const c = $("output"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0;
    for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += v; sq += v * v; }
    const n = d.length / 4, mean = sum / n;
    return { width: c.width, height: c.height, mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)) };
  },
  readout() { return { fps: $("fps").textContent, latency: $("latency").textContent }; },
};

connect();
startCamera();
