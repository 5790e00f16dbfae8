// Runs ONNX files with onnxruntime-web (its WASM build, in Node, one thread) on one input batch and prints
// the logits as JSON: `node ort_parity.mjs JOB.json`, JOB = {input, dims, type, models: [paths]}, `input`
// a raw little-endian file of `type` (float32 or uint8). tests/test_export_web.py compares them with
// onnxruntime in Python. onnxruntime-web is the one `npm ci` installs in export/web (pinned there).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const pageDir = fileURLToPath(new URL("../../export/web/", import.meta.url));
const require = createRequire(pageDir + "package.json");
const dist = dirname(require.resolve("onnxruntime-web"));
const ort = await import(pathToFileURL(join(dist, "ort.node.min.mjs")).href);
ort.env.wasm.numThreads = 1;

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const bytes = readFileSync(job.input);
const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
const data = job.type === "uint8" ? new Uint8Array(buffer) : new Float32Array(buffer);
const results = {};
for (const model of job.models) {
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  const outputs = await session.run({ [session.inputNames[0]]: new ort.Tensor(job.type, data, job.dims) });
  const logits = outputs.logits ?? outputs[session.outputNames[0]];
  results[model] = { dims: logits.dims, data: Array.from(logits.data) };
  await session.release();
}
process.stdout.write(JSON.stringify({ version: ort.env.versions.web, results }));
