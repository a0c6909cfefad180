// DP-SIMS web painter. The label map lives in `ids` (one class id per pixel, at the artifact's size); the canvas
// only shows it in the class colours, so nothing is ever read back from canvas pixels. Generate sends `ids` as a
// greyscale PNG (pixel value = class id), which the server hands to the predictor as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const painter = {
  info: null, width: 0, height: 0, ids: null, palette: null, current: 0, generation: 0, busy: false,
};
window.painter = painter; // for tests and the console

const canvas = $("label-canvas");
const ctx = canvas.getContext("2d");
let imageData = null;
let drawPending = false;

// ------------------------------------------------------------------------------------------------ setup
async function init() {
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(await errorText(response));
    setup(await response.json());
  } catch (e) {
    setStatus(`Cannot load the model info: ${e.message}`, true);
  }
}

function setup(info) {
  painter.info = info;
  [painter.height, painter.width] = info.input_size;
  const Ids = info.num_classes > 256 ? Uint16Array : Uint8Array;
  painter.ids = new Ids(painter.width * painter.height);
  painter.palette = new Uint8Array(3 * Math.max(256, info.num_classes + 1));
  for (const c of info.classes) painter.palette.set(c.color, 3 * c.id);
  canvas.width = painter.width;
  canvas.height = painter.height;
  imageData = ctx.createImageData(painter.width, painter.height);
  $("model-info").textContent =
    `${info.target} · ${info.precision} · ${painter.height}×${painter.width} · ${info.num_classes} classes`;
  $("n-variations").max = info.max_variations;
  buildClassList(info.classes);
  selectClass(info.classes[0].id);
  redraw();
  document.body.dataset.ready = "true";
}

function buildClassList(classes) {
  const list = $("class-list");
  list.replaceChildren();
  for (const c of classes) {
    const item = document.createElement("li");
    item.setAttribute("role", "option");
    item.dataset.classId = c.id;
    item.dataset.name = c.name.toLowerCase();
    item.title = `${c.name} (id ${c.id}, rgb ${c.color.join(", ")})`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.color.join(",")})`;
    const id = document.createElement("span");
    id.className = "class-id";
    id.textContent = c.id;
    const name = document.createElement("span");
    name.textContent = c.name;
    item.append(swatch, id, name);
    item.addEventListener("click", () => selectClass(c.id));
    list.append(item);
  }
}

function selectClass(id) {
  painter.current = id;
  for (const item of $("class-list").children) {
    item.setAttribute("aria-selected", String(Number(item.dataset.classId) === id));
  }
}

function className(id) {
  const c = painter.info.classes.find((k) => k.id === id);
  return c ? c.name : id === painter.info.ignore_id ? "ignore" : `id ${id}`;
}

// --------------------------------------------------------------------------------------------- drawing
function redraw() {
  drawPending = false;
  const { ids, palette } = painter;
  const px = imageData.data;
  for (let i = 0, j = 0; i < ids.length; i++, j += 4) {
    const k = 3 * ids[i];
    px[j] = palette[k]; px[j + 1] = palette[k + 1]; px[j + 2] = palette[k + 2]; px[j + 3] = 255;
  }
  ctx.putImageData(imageData, 0, 0);
}

function scheduleRedraw() {
  if (!drawPending) { drawPending = true; requestAnimationFrame(redraw); }
}

function stamp(cx, cy) { // a disc of diameter `size` map pixels centred on (cx, cy)
  const size = Number($("brush-size").value);
  const r = size / 2;
  const { width, height, ids, current } = painter;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(width - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(height - 1, Math.ceil(cy + r));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      if (size <= 1 ? (x === Math.floor(cx) && y === Math.floor(cy)) : dx * dx + dy * dy <= r * r) {
        ids[y * width + x] = current;
      }
    }
  }
}

function strokeTo(from, to) {
  const steps = Math.max(1, Math.ceil(Math.hypot(to.x - from.x, to.y - from.y)));
  for (let s = 1; s <= steps; s++) {
    stamp(from.x + ((to.x - from.x) * s) / steps, from.y + ((to.y - from.y) * s) / steps);
  }
}

function floodFill(x, y) { // 4-connected region of the clicked class -> the current class
  const { width, height, ids, current } = painter;
  const target = ids[y * width + x];
  if (target === current) return;
  const stack = [y * width + x];
  while (stack.length) {
    const i = stack.pop();
    if (ids[i] !== target) continue;
    ids[i] = current;
    const px = i % width;
    if (px > 0) stack.push(i - 1);
    if (px < width - 1) stack.push(i + 1);
    if (i >= width) stack.push(i - width);
    if (i < width * (height - 1)) stack.push(i + width);
  }
}

function mapPoint(event) { // pointer position in label-map pixels (fractional)
  const rect = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * painter.width) / rect.width,
    y: ((event.clientY - rect.top) * painter.height) / rect.height,
  };
}

function clampedPixel(p) {
  return {
    x: Math.min(painter.width - 1, Math.max(0, Math.floor(p.x))),
    y: Math.min(painter.height - 1, Math.max(0, Math.floor(p.y))),
  };
}

let last = null;
canvas.addEventListener("pointerdown", (event) => {
  if (!painter.ids || event.button !== 0) return;
  const p = mapPoint(event);
  if (document.querySelector("input[name=tool]:checked").value === "fill") {
    const q = clampedPixel(p);
    floodFill(q.x, q.y);
  } else {
    canvas.setPointerCapture(event.pointerId);
    stamp(p.x, p.y);
    last = p;
  }
  scheduleRedraw();
});
canvas.addEventListener("pointermove", (event) => {
  if (!painter.ids) return;
  const p = mapPoint(event);
  const q = clampedPixel(p);
  $("hover-class").textContent = `(${q.x}, ${q.y}) ${className(painter.ids[q.y * painter.width + q.x])}`;
  if (last) { strokeTo(last, p); last = p; scheduleRedraw(); }
});
for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });

$("fill-all").addEventListener("click", () => { painter.ids.fill(painter.current); scheduleRedraw(); });
$("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });
$("class-filter").addEventListener("input", () => {
  const q = $("class-filter").value.trim().toLowerCase();
  for (const item of $("class-list").children) item.hidden = q !== "" && !item.dataset.name.includes(q) && item.dataset.classId !== q;
});
$("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });

// ------------------------------------------------------------------------------------------ generating
function labelForm(extra) {
  const form = new FormData();
  return encodeLabelPng().then((png) => {
    form.append("label", new Blob([png], { type: "image/png" }), "label.png");
    form.append("seed", String(Math.max(0, Math.floor(Number($("seed").value) || 0))));
    for (const [k, v] of Object.entries(extra || {})) form.append(k, String(v));
    return form;
  });
}

async function post(url, extra) {
  const response = await fetch(url, { method: "POST", body: await labelForm(extra) });
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function run(button, work) {
  if (painter.busy) return;
  painter.busy = true;
  for (const b of [$("generate"), $("variations")]) b.disabled = true;
  setStatus(`${button.textContent}…`);
  const t0 = performance.now();
  try {
    await work();
    setStatus(`${button.textContent}: ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    painter.busy = false;
    for (const b of [$("generate"), $("variations")]) b.disabled = false;
  }
}

$("generate").addEventListener("click", (event) => run(event.currentTarget, async () => {
  const blob = await (await post("/api/generate")).blob();
  const img = $("result");
  const old = img.src;
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error("The server's image did not decode."));
    img.src = URL.createObjectURL(blob);
  });
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  img.hidden = false;
  $("result-empty").hidden = true;
  painter.generation += 1;
  img.dataset.generation = painter.generation;
}));

$("variations").addEventListener("click", (event) => run(event.currentTarget, async () => {
  const n = Math.min(painter.info.max_variations, Math.max(1, Math.floor(Number($("n-variations").value) || 1)));
  const { seeds, images } = await (await post("/api/variations", { n })).json();
  const strip = $("variation-strip");
  strip.replaceChildren(...images.map((b64, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${b64}`;
    img.alt = `variation, seed ${seeds[i]}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `seed ${seeds[i]}`;
    figure.append(img, caption);
    return figure;
  }));
  strip.dataset.count = images.length;
}));

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return `${response.status}: ${detail}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// ------------------------------------------------------------------- greyscale PNG of the ids (exact)
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(raw) {
  if (typeof CompressionStream !== "undefined") { // "deflate" is the zlib format PNG wants
    const stream = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const blocks = Math.max(1, Math.ceil(raw.length / 65535)); // stored (uncompressed) deflate blocks
  const out = new Uint8Array(2 + raw.length + 5 * blocks + 4);
  out[0] = 0x78; out[1] = 0x01;
  let o = 2;
  for (let b = 0; b < blocks; b++) {
    const part = raw.subarray(b * 65535, Math.min(raw.length, (b + 1) * 65535));
    out[o] = b === blocks - 1 ? 1 : 0;
    out[o + 1] = part.length & 0xff; out[o + 2] = part.length >>> 8;
    out[o + 3] = ~part.length & 0xff; out[o + 4] = (~part.length >>> 8) & 0xff;
    out.set(part, o + 5);
    o += 5 + part.length;
  }
  let a = 1, s = 0;
  for (let i = 0; i < raw.length; i++) { a = (a + raw[i]) % 65521; s = (s + a) % 65521; }
  new DataView(out.buffer).setUint32(o, ((s << 16) | a) >>> 0);
  return out;
}

async function encodeLabelPng() {
  const { width, height, ids } = painter;
  const depth = ids instanceof Uint16Array ? 16 : 8;
  const stride = 1 + (width * depth) / 8;
  const raw = new Uint8Array(stride * height); // filter byte 0 (none) + samples, row by row
  for (let y = 0; y < height; y++) {
    const row = ids.subarray(y * width, (y + 1) * width);
    if (depth === 8) raw.set(row, y * stride + 1);
    else for (let x = 0; x < width; x++) { raw[y * stride + 1 + 2 * x] = row[x] >>> 8; raw[y * stride + 2 + 2 * x] = row[x] & 0xff; }
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width); view.setUint32(4, height);
  header[8] = depth; header[9] = 0; // greyscale
  const parts = [
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", header), chunk("IDAT", await zlib(raw)), chunk("IEND", new Uint8Array(0)),
  ];
  const png = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { png.set(p, o); o += p.length; }
  return png;
}
painter.encodeLabelPng = encodeLabelPng;

init();
