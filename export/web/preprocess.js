// The page's preprocessing: RGBA pixels -> the model's input tensor, exactly as export/infer.py does it.
//
// infer.py (Pillow) converts the image to the model's channels first (grayscale = ITU-R 601-2 luma in
// Pillow's integer arithmetic), then resizes it bilinearly with Pillow's antialiasing filter (8-bit,
// fixed point), then maps raw pixels with the metadata's `(raw * scale - mean) / std` in float32.
// Each step below is the same arithmetic, so the tensors are equal, not just close (tests/web checks it).
// No DOM here: Node imports this module in the tests.

// Pillow's Resample.c: 8 bits per channel, coefficients in fixed point with this many fractional bits.
const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

/** Pillow's convert("L") of one RGB pixel: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16. */
export function luma(r, g, b) {
  return Math.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536);
}

/**
 * RGBA pixels (as from a canvas' getImageData) -> `channels` (1, 3 or 4) interleaved uint8 pixels, as
 * Pillow's convert does: 1 = luma of RGB (alpha ignored), 3 = alpha dropped, 4 = kept.
 */
export function toChannels(rgba, width, height, channels) {
  const n = width * height;
  const out = new Uint8Array(n * channels);
  for (let i = 0; i < n; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (channels === 1) {
      out[i] = luma(r, g, b);
    } else {
      out[channels * i] = r;
      out[channels * i + 1] = g;
      out[channels * i + 2] = b;
      if (channels === 4) out[4 * i + 3] = rgba[4 * i + 3];
    }
  }
  return out;
}

/** Pillow's precompute_coeffs for the bilinear (triangle) filter, then normalize_coeffs_8bpc. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterScale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const k = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0.0 ? k[x] / ww : k[x];
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(sum) {
  if (sum >= ONE * 256) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / ONE);
}

/**
 * Pillow's `Image.resize(size, BILINEAR)` of interleaved uint8 pixels (`channels` per pixel):
 * a horizontal pass, then a vertical one, each rounded to 8 bits, as Resample.c does.
 */
export function resizeBilinear(pixels, width, height, channels, outWidth, outHeight) {
  if (width === outWidth && height === outHeight) return pixels;
  let current = pixels;
  let curWidth = width;
  if (outWidth !== width) {
    const { ksize, bounds, weights } = coefficients(width, outWidth);
    const out = new Uint8Array(outWidth * height * channels);
    for (let y = 0; y < height; y++) {
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = bounds[2 * xx], xmax = bounds[2 * xx + 1];
        for (let c = 0; c < channels; c++) {
          let sum = ONE / 2;
          for (let x = 0; x < xmax; x++) {
            sum += current[((y * width) + x + xmin) * channels + c] * weights[xx * ksize + x];
          }
          out[(y * outWidth + xx) * channels + c] = clip8(sum);
        }
      }
    }
    current = out;
    curWidth = outWidth;
  }
  if (outHeight !== height) {
    const { ksize, bounds, weights } = coefficients(height, outHeight);
    const out = new Uint8Array(curWidth * outHeight * channels);
    for (let yy = 0; yy < outHeight; yy++) {
      const ymin = bounds[2 * yy], ymax = bounds[2 * yy + 1];
      for (let x = 0; x < curWidth; x++) {
        for (let c = 0; c < channels; c++) {
          let sum = ONE / 2;
          for (let y = 0; y < ymax; y++) {
            sum += current[((y + ymin) * curWidth + x) * channels + c] * weights[yy * ksize + y];
          }
          out[(yy * curWidth + x) * channels + c] = clip8(sum);
        }
      }
    }
    current = out;
  }
  return current;
}

/**
 * Raw uint8 pixels (H*W*C, interleaved) -> the model's input values, as infer.py's _normalise:
 * `(raw * scale - mean) / std` in float32 arithmetic; with no scale (the graph normalises) the raw pixels,
 * as uint8 or float32 (`dtype`).
 */
export function normalise(raw, channels, { scale, mean, std, dtype }) {
  if (scale === null || scale === undefined) {
    return dtype === "uint8" ? Uint8Array.from(raw) : Float32Array.from(raw);
  }
  const f = Math.fround;
  const s = f(scale);
  const m = Array.from({ length: channels }, (_, c) => f(mean.length === 1 ? mean[0] : mean[c]));
  const d = Array.from({ length: channels }, (_, c) => f(std.length === 1 ? std[0] : std[c]));
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const c = i % channels;
    out[i] = f(f(f(raw[i] * s) - m[c]) / d[c]);
  }
  return out;
}

/**
 * The input spec of a model from its keras-vit metadata (the site's model.json): height, width,
 * channels, dtype, and scale/mean/std (`scale: null` when the preprocessing is inside the graph).
 */
export function inputSpec(metadata) {
  const [height, width] = metadata.image_size;
  const channels = metadata.channels;
  const pre = metadata.preprocessing || {};
  const hasScale = pre.scale !== undefined && pre.scale !== null;
  const perChannel = (value, fallback) => {
    if (value === undefined || value === null) return new Array(channels).fill(fallback);
    return Array.isArray(value) ? value.map(Number) : new Array(channels).fill(Number(value));
  };
  return {
    height, width, channels,
    dtype: metadata.input_dtype || "float32",
    scale: hasScale ? Number(pre.scale) : null,
    mean: perChannel(pre.mean, 0.0),
    std: perChannel(pre.std, 1.0),
  };
}

/**
 * RGBA pixels of any size -> `{ data, dims, type }` for one ort.Tensor of shape [1, H, W, C]:
 * channels, then resize, then normalise, as infer.py does for an image file.
 */
export function preprocess(rgba, width, height, spec) {
  const pixels = toChannels(rgba, width, height, spec.channels);
  const resized = resizeBilinear(pixels, width, height, spec.channels, spec.width, spec.height);
  const data = normalise(resized, spec.channels, spec);
  return { data, dims: [1, spec.height, spec.width, spec.channels], type: spec.dtype === "uint8" ? "uint8" : "float32" };
}

/** Softmax of logits (float64, max-subtracted). */
export function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / total);
}

/** The k most likely classes: [{label, probability, index}], ties broken by the lower index (as infer.py). */
export function topK(probabilities, classNames, k) {
  const order = Array.from(probabilities, (_, i) => i);
  order.sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  return order.slice(0, Math.max(1, Math.min(k, order.length))).map((i) => ({
    label: classNames && classNames[i] !== undefined ? String(classNames[i]) : String(i),
    probability: probabilities[i],
    index: i,
  }));
}
