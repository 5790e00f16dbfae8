// The page of `keras-vit export --format web`: loads model.json (labels, preprocessing, written by the
// exporter from the ONNX file's keras-vit metadata) and model.onnx, runs it with onnxruntime-web's WASM
// build on one thread (works from any static server: threads would need cross-origin isolation headers),
// or, when the site was exported with --webgpu and the browser has WebGPU, with its WebGPU build on request.
//
// The contract for scripts and tests:
//   index.html?image=URL   classifies that image on load (&runs=N: then the median latency of N more
//                          runs after up to 10 warm-up runs)
//   &ep=wasm|webgpu        the backend (default wasm); webgpu where unavailable is an error, no fallback
//   #prediction            its text is the top label; data-top-k holds the top-k as JSON
//                          [{label, probability, index}], data-latency-ms the latency, data-backend
//                          the backend that ran (wasm | webgpu)
//   #error                 any error (model missing, image unreadable), never silent
//   body[data-state]       loading -> ready -> running -> done | error
import { inputSpec, preprocess, softmax, topK } from "./preprocess.js";

const TOP_K = 5;
const PAD_LINE_WIDTH = 22;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const BACKENDS = { wasm: "WASM", webgpu: "WebGPU" };

let ort = null;
let backend = "wasm";
let session = null;
let metadata = null;
let spec = null;

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  $("error").textContent = message;
  setState("error");
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(`cannot fetch ${what} ${url}: ${err.message}`);
  }
  if (!response.ok) throw new Error(`cannot fetch ${what} ${url}: HTTP ${response.status} ${response.statusText}`);
  return response;
}

async function loadModel() {
  metadata = await (await fetchOk("model.json", "the model description")).json();
  spec = inputSpec(metadata);
  backend = await chooseBackend();
  ort = await import(backend === "webgpu" ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs");
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  const bytes = new Uint8Array(await (await fetchOk(metadata.model, "the model")).arrayBuffer());
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: [backend] });
  } catch (err) {
    throw new Error(`onnxruntime-web (${BACKENDS[backend]}) cannot load ${metadata.model}: ${err.message || err}`);
  }
  const [h, w] = metadata.image_size;
  const kind = metadata.quantize ? `${metadata.quantize}, ` : "";
  $("title").textContent = metadata.preset || metadata.name || "keras-vit";
  $("model-info").textContent =
    `${h}\u00d7${w}\u00d7${metadata.channels} input, ${metadata.class_names.length} classes ` +
    `(${kind}onnxruntime-web ${ort.env.versions?.web ?? metadata.onnxruntime_web}, ${backendNote()})`;
  if (metadata.channels === 1) $("draw").hidden = false;
}

const backendNote = () => (backend === "webgpu" ? "WebGPU" : "WASM, 1 thread");

/** The backend ?ep= asks for (default WASM); WebGPU only where the site ships it and the browser has it. */
async function chooseBackend() {
  const asked = (params.get("ep") || "wasm").toLowerCase();
  if (!(asked in BACKENDS)) throw new Error(`unknown backend ep=${asked}: choose wasm or webgpu`);
  const offered = Boolean(metadata.webgpu && navigator.gpu);
  if (offered) {
    const select = $("backend");
    select.value = asked;
    select.addEventListener("change", () => {
      params.set("ep", select.value);
      location.search = params.toString();  // reload with the other runtime
    });
    $("backend-choice").hidden = false;
  }
  if (asked === "webgpu") {
    if (!metadata.webgpu) throw new Error("WebGPU was asked for, but this site was exported without --webgpu");
    if (!navigator.gpu) throw new Error("WebGPU was asked for, but this browser has no WebGPU (navigator.gpu)");
    if (!(await navigator.gpu.requestAdapter())) {
      throw new Error("WebGPU was asked for, but this browser gives no WebGPU adapter");
    }
  }
  return asked;
}

/** Logits -> probabilities as export/infer.py does: the graph's `probabilities` output, else a softmax. */
function probabilitiesOf(outputs) {
  if (outputs.probabilities) return Array.from(outputs.probabilities.data, Number);
  const logits = outputs.logits ?? outputs[session.outputNames[0]];
  return softmax(Array.from(logits.data, Number));
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Classify RGBA pixels of any size; shows the top-k bars and the latency. */
async function classify(rgba, width, height) {
  setState("running");
  const input = preprocess(rgba, width, height, spec);
  const feeds = { [session.inputNames[0]]: new ort.Tensor(input.type, input.data, input.dims) };
  let start = performance.now();
  const outputs = await session.run(feeds);
  let latency = performance.now() - start;
  let note = "one run";
  const runs = Number.parseInt(params.get("runs") || "0", 10);
  if (runs > 0) {
    for (let i = 0; i < Math.min(runs, 10); i++) await session.run(feeds);  // warm-up, not timed
    const times = [];
    for (let i = 0; i < runs; i++) {
      start = performance.now();
      await session.run(feeds);
      times.push(performance.now() - start);
    }
    latency = median(times);
    note = `median of ${runs} runs`;
  }
  const top = topK(probabilitiesOf(outputs), metadata.class_names, TOP_K);
  render(top, latency, note);
}

function render(top, latency, note) {
  const prediction = $("prediction");
  prediction.textContent = top[0].label;
  prediction.dataset.topK = JSON.stringify(top);
  prediction.dataset.latencyMs = latency.toFixed(3);
  prediction.dataset.backend = backend;
  const bars = $("bars");
  bars.replaceChildren(...top.map(({ label, probability }) => {
    const item = document.createElement("li");
    const name = Object.assign(document.createElement("span"), { className: "label", textContent: label });
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${(100 * probability).toFixed(1)}%`;
    const value = Object.assign(document.createElement("span"), {
      className: "p", textContent: `${(100 * probability).toFixed(1)}%`,
    });
    item.append(name, bar, value);
    return item;
  }));
  $("latency").textContent = `${latency.toFixed(2)} ms per image (batch 1, ${note}, ${backendNote()})`;
  $("error").textContent = "";
  setState("done");
}

/** The RGBA pixels of an image Blob at its own size (no browser resampling, no colour conversion). */
async function pixelsOf(blob, name) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new Error(`${name} is not a readable image`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

async function classifyBlob(blob, name) {
  const preview = $("preview");
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  const image = await pixelsOf(blob, name);
  await classify(image.data, image.width, image.height);
}

async function run(task) {
  try {
    await task();
  } catch (err) {
    showError(err.message || String(err));
  }
}

// --- drawing (digit models) ---------------------------------------------------------------------

function setUpPad() {
  const pad = $("pad");
  const context = pad.getContext("2d", { willReadFrequently: true });
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, pad.width, pad.height);
  };
  clear();
  let drawing = false;
  const point = (event) => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  };
  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    pad.setPointerCapture(event.pointerId);
    context.strokeStyle = "#fff";
    context.fillStyle = "#fff";
    context.lineWidth = PAD_LINE_WIDTH;
    context.lineCap = "round";
    context.lineJoin = "round";
    const [x, y] = point(event);
    context.beginPath();
    context.arc(x, y, PAD_LINE_WIDTH / 2, 0, 2 * Math.PI);
    context.fill();
    context.beginPath();
    context.moveTo(x, y);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const [x, y] = point(event);
    context.lineTo(x, y);
    context.stroke();
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    const image = context.getImageData(0, 0, pad.width, pad.height);
    run(() => classify(image.data, image.width, image.height));
  };
  pad.addEventListener("pointerup", finish);
  pad.addEventListener("pointercancel", finish);
  $("clear").addEventListener("click", clear);
}

// --- files and the camera -------------------------------------------------------------------------

function setUpFiles() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) run(() => classifyBlob(file, file.name));
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) run(() => classifyBlob(file, file.name));
  });
}

function setUpCamera() {
  if (!navigator.mediaDevices?.getUserMedia) return;  // only on https:// or localhost
  const button = $("camera");
  const video = $("video");
  button.hidden = false;
  button.addEventListener("click", () => run(async () => {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    await video.play();
    video.hidden = false;
    $("snap").hidden = false;
  }));
  $("snap").addEventListener("click", () => run(async () => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(video, 0, 0);
    const image = context.getImageData(0, 0, canvas.width, canvas.height);
    await classify(image.data, image.width, image.height);
  }));
}

// --- start ------------------------------------------------------------------------------------------

run(async () => {
  await loadModel();
  setUpPad();
  setUpFiles();
  setUpCamera();
  setState("ready");
  const url = params.get("image");
  if (url) {
    const blob = await (await fetchOk(url, "the image")).blob();
    await classifyBlob(blob, url);
  }
});
