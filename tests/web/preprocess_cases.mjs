// Runs the page's preprocessing (export/web/preprocess.js) on the cases in a JSON file and prints the
// tensors as JSON: `node preprocess_cases.mjs CASES.json`. CASES: [{rgba: [...], width, height, metadata}].
// tests/test_export_web.py compares them with export/infer.py's for the same pixels.
import { readFileSync } from "node:fs";
import { inputSpec, preprocess } from "../../export/web/preprocess.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = cases.map(({ rgba, width, height, metadata }) => {
  const tensor = preprocess(Uint8ClampedArray.from(rgba), width, height, inputSpec(metadata));
  return { dims: tensor.dims, type: tensor.type, data: Array.from(tensor.data) };
});
process.stdout.write(JSON.stringify(results));
