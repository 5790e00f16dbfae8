# %% [markdown]
# # 3. Export to SavedModel and ONNX, and run on onnxruntime
#
# `keras_vit.export` turns the trained model into files that run without Keras: a TensorFlow
# SavedModel (for TF Serving) and ONNX (plain, graph-optimized, and INT8-quantized) for onnxruntime.
# Every export checks itself against the Keras model on real images before it writes the file, and
# stores what a runtime needs (image size, channels, preprocessing, class names) as metadata.
# Then we load the files ourselves, check that their predictions agree with Keras, classify raw images
# with the edge runtime (`export/infer.py`: numpy + onnxruntime only), and measure latency and size.
#
# It uses the model saved by notebook 1, or trains a small one when that file is not there.

# %% tags=["parameters"]
MODEL_PATH = "outputs/01_train_vit/model.keras"  # written by 01_train_vit.ipynb
EXPORT_DIR = "outputs/03_export"
DATASET = "mnist"            # test images from here (falls back to the packaged sample)
DATA_DIR = None
COMPARE_IMAGES = 1000        # test images on which the exported files are compared with Keras
LATENCY_RUNS = 200           # timed batch-1 calls per format (median reported)
FALLBACK_EPOCHS = 3          # when MODEL_PATH is missing: train vit_mnist on the packaged sample this long
SEED = 0

# %%
# %matplotlib inline
import importlib.util
import json
import sys
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
import tensorflow as tf

import keras_vit
from keras_vit.datasets import load_dataset, preprocess
from keras_vit.errors import UserInputError
from keras_vit.export import read_metadata, to_onnx, to_saved_model
from keras_vit.export.optimize import time_calls
from keras_vit.training import TrainConfig, fit, set_seed

tf.get_logger().setLevel("ERROR")  # no "Assets written" / retracing chatter in the outputs

try:
    data = load_dataset(DATASET, DATA_DIR)
except UserInputError as err:
    print(f"{DATASET} is not available here ({err})\n-> using the packaged MNIST sample instead")
    data = load_dataset("sample")

if not Path(MODEL_PATH).is_file():
    print(f"{MODEL_PATH} not found: training vit_mnist on the packaged sample for {FALLBACK_EPOCHS} epochs")
    set_seed(SEED)
    trained = keras_vit.create_model("vit_mnist")
    fit(trained, load_dataset("sample"), TrainConfig(epochs=FALLBACK_EPOCHS, seed=SEED, verbose=2))
    MODEL_PATH = str(Path(EXPORT_DIR) / "model.keras")
    Path(EXPORT_DIR).mkdir(parents=True, exist_ok=True)
    trained.save(MODEL_PATH)
model = keras.saving.load_model(MODEL_PATH)
print(f"{MODEL_PATH}: {model.name}, preset {model.preset}, input {model.input_shape}, "
      f"preprocessing {model.preprocessing}")
out = Path(EXPORT_DIR)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Export
# Each call prints what it wrote and every figure it checked.

# %%
# The INT8 export refuses (ExportVerificationError) a file whose top-1 predictions disagree with the
# float model's on more than 1 % of the check images; the notebook then stops here, on purpose. A
# barely trained model (near-ties everywhere) can be refused: train it longer.
reports = {
    "SavedModel": to_saved_model(MODEL_PATH, out / "saved_model"),
    "ONNX": to_onnx(MODEL_PATH, out / "model.onnx"),
    "ONNX optimized": to_onnx(MODEL_PATH, out / "model.opt.onnx", optimize=True),
    "ONNX INT8": to_onnx(MODEL_PATH, out / "model.int8.onnx", quantize="int8"),
}
for name, report in reports.items():
    print(f"--- {name}")
    print("\n".join(report.summary_lines()))

# %% [markdown]
# The metadata travels inside the ONNX file (`metadata_props`) and beside the SavedModel (a JSON file):

# %%
print(json.dumps(read_metadata(out / "model.onnx"), indent=1))

# %% [markdown]
# ## Do the exported files agree with Keras?
# On test images the notebook picks itself: the SavedModel through TensorFlow, the ONNX files through a
# plain `onnxruntime.InferenceSession`.

# %%
n = min(COMPARE_IMAGES, len(data.x_test))
raw, labels = data.x_test[:n], data.y_test[:n]
inputs = preprocess(raw, model.preprocessing)
keras_logits = np.asarray(model.predict(inputs, batch_size=256, verbose=0))

saved = tf.saved_model.load(str(out / "saved_model"))
serve = saved.signatures["serving_default"]
sessions = {name: ort.InferenceSession(r.path, providers=["CPUExecutionProvider"])
            for name, r in reports.items() if r.format == "onnx"}
logits = {"Keras": keras_logits,
          "SavedModel": np.concatenate([serve(images=tf.constant(inputs[i:i + 256]))["logits"].numpy()
                                        for i in range(0, n, 256)])}
for name, session in sessions.items():
    logits[name] = session.run(["logits"], {"images": inputs})[0]

print(f"{'format':16s} {'max |logit - Keras|':>20s} {'top-1 = Keras':>14s} {'accuracy':>9s}")
for name, values in logits.items():
    agree = (values.argmax(1) == keras_logits.argmax(1)).mean()
    accuracy = (values.argmax(1) == labels).mean()
    print(f"{name:16s} {np.abs(values - keras_logits).max():20.2e} {agree:14.2%} {accuracy:9.2%}")

# %% [markdown]
# ## The edge runtime
# `export/infer.py` is the whole runtime for a device: numpy + onnxruntime (+ Pillow for image files),
# no Keras or TensorFlow. It reads the preprocessing and class names from the file's metadata, so it
# takes raw uint8 pixels.

# %%
try:
    from keras_vit_edge import infer  # installed with the package (pip install keras-vision-transformer[edge])
except ImportError:  # a source checkout: load export/infer.py itself
    path = Path(keras_vit.__file__).resolve().parent.parent / "export" / "infer.py"
    spec = importlib.util.spec_from_file_location("infer", path)
    infer = sys.modules["infer"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)

edge_path = reports["ONNX INT8"].path
classifier = infer.Classifier(edge_path)
probabilities = classifier.predict(raw)  # raw uint8 pixels in, probabilities out
print(f"edge runtime on {Path(edge_path).name}: accuracy {(probabilities.argmax(1) == labels).mean():.2%}, "
      f"top-1 = Keras {(probabilities.argmax(1) == keras_logits.argmax(1)).mean():.2%}")
for label, top in zip(labels[:5], classifier.top_k(probabilities[:5], 3)):
    print(f"  true {data.class_names[label]}: " + ", ".join(f"{t.label} {t.probability:.3f}" for t in top))

# %% [markdown]
# ## Latency and size
# Median of `LATENCY_RUNS` single-image calls on this machine (shared CPU: absolute numbers are noisy;
# compare the bars with each other), and the size on disk of each format. The `.keras` file written by
# `fit` also holds the optimizer's state (AdamW's two moments per weight), hence about 3x the weights.

# %%
one = inputs[:1]
calls = {
    "Keras": lambda: model.predict_on_batch(one),
    "SavedModel": lambda: serve(images=tf.constant(one)),
    **{name: (lambda s=session: s.run(["logits"], {"images": one})) for name, session in sessions.items()},
}
latency_ms = {name: float(np.median(time_calls(call, LATENCY_RUNS, warmup=5)) * 1e3) for name, call in calls.items()}


def size_mb(path):
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


sizes = {"Keras": size_mb(MODEL_PATH), **{name: size_mb(r.path) for name, r in reports.items()}}
for name in calls:
    print(f"{name:16s} {latency_ms[name]:8.3f} ms/image (batch 1)  {sizes[name]:6.2f} MB")

fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 3.8))
names = list(calls)
colors = plt.cm.tab10(np.arange(len(names)))
ax_t.barh(names, [latency_ms[k] for k in names], color=colors)
ax_t.set(xlabel="ms per image (batch 1, median)", title="Latency")
ax_s.barh(names, [sizes[k] for k in names], color=colors)
ax_s.set(xlabel="MB on disk", title="File size")
for ax, values in ((ax_t, latency_ms), (ax_s, sizes)):
    ax.invert_yaxis()
    for y, k in enumerate(names):
        ax.text(values[k], y, f" {values[k]:.3g}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
fig.tight_layout()
plt.show()
