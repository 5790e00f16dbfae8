# %% [markdown]
# # 1. Train a Vision Transformer on MNIST
#
# This notebook trains the `vit_mnist` preset (a 28x28 image cut into 16 patches of 7x7, 6 transformer
# blocks) with the library's training recipe (`keras_vit.training.fit`: AdamW, warm-up + cosine decay,
# label smoothing, light augmentation, a held-out validation split), then looks at what it gets wrong
# and saves `model.keras` for the two other notebooks.
#
# Every cell runs in order from a fresh kernel. The next cell holds the parameters (tests run it with
# tiny values).

# %% tags=["parameters"]
DATASET = "mnist"        # "mnist": $KERAS_VIT_DATA (or DATA_DIR), else the download; "sample": the packaged sample
DATA_DIR = None          # folder holding mnist/mnist.npz; None: $KERAS_VIT_DATA, else download
PRESET = "vit_mnist"
MODEL_OVERRIDES = {}     # create_model overrides, e.g. {"depth": 2} for a quick test
EPOCHS = 3
TRAIN_SAMPLES = None     # None: the whole training split; an int: its first N images
TEST_SAMPLES = None      # None: the whole test split
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
SEED = 0
OUTPUT_DIR = "outputs/01_train_vit"   # model.keras, history.json, checkpoints/ go here
FIGURES_DIR = None       # when set, the patch picture is also saved there as patches.png

# %%
# %matplotlib inline
from dataclasses import replace
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np

import keras_vit
from keras_vit.datasets import load_dataset, preprocess
from keras_vit.errors import UserInputError
from keras_vit.layers import PatchExtractor
from keras_vit.training import TrainConfig, describe_device, evaluate, fit, set_seed

print(f"keras-vit {keras_vit.__version__}, Keras {keras.__version__}, backend {keras.backend.backend()}")
print("training device:", describe_device())

# %% [markdown]
# ## The data
# `load_dataset("mnist")` reads `$KERAS_VIT_DATA/mnist/mnist.npz` when that variable is set, else
# downloads MNIST with `keras.datasets`; without either (offline, no files) we fall back to the
# 5,000/1,000-image sample shipped inside the package.

# %%
try:
    data = load_dataset(DATASET, DATA_DIR)
except UserInputError as err:
    print(f"{DATASET} is not available here ({err})\n-> using the packaged MNIST sample instead")
    data = load_dataset("sample")
if TRAIN_SAMPLES or TEST_SAMPLES:
    data = replace(data, x_train=data.x_train[:TRAIN_SAMPLES], y_train=data.y_train[:TRAIN_SAMPLES],
                   x_test=data.x_test[:TEST_SAMPLES], y_test=data.y_test[:TEST_SAMPLES])
print(data.describe())
print("pixels:", data.x_train.dtype, data.x_train.min(), "..", data.x_train.max(),
      "| train labels per class:", np.bincount(data.y_train, minlength=data.num_classes))

# %%
fig, axes = plt.subplots(4, 8, figsize=(8, 4.4))
for ax, image, label in zip(axes.flat, data.x_train, data.y_train):
    ax.imshow(image[..., 0], cmap="gray")
    ax.set_title(data.class_names[label], fontsize=9)
    ax.axis("off")
fig.suptitle("Training images")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## An image as a sequence of patches
# A ViT does not see pixels: the library's `PatchExtractor` layer (the model's first layer) cuts the image
# into non-overlapping P x P patches in row-major order and flattens each one; every patch becomes one
# token of the transformer's input sequence.

# %%
patch_size = keras_vit.PRESETS[PRESET]["patch_size"]
image = data.x_train[0]
patches = keras.ops.convert_to_numpy(PatchExtractor(patch_size)(image[None].astype("float32")))[0]
grid = image.shape[0] // patch_size, image.shape[1] // patch_size
print(f"image {image.shape} -> {patches.shape[0]} patches of {patch_size}x{patch_size} "
      f"= {patches.shape[1]} values each")

fig = plt.figure(figsize=(8, 4))
left = fig.add_axes([0.02, 0.08, 0.36, 0.8])
left.imshow(image[..., 0], cmap="gray")
for k in range(1, grid[0]):
    left.axhline(k * patch_size - 0.5, color="tab:orange", lw=1.5)
for k in range(1, grid[1]):
    left.axvline(k * patch_size - 0.5, color="tab:orange", lw=1.5)
left.set_title(f"{image.shape[0]}x{image.shape[1]} image, label {data.class_names[data.y_train[0]]}")
left.axis("off")
for i, patch in enumerate(patches):
    r, c = divmod(i, grid[1])
    ax = fig.add_axes([0.45 + c * 0.135, 0.04 + (grid[0] - 1 - r) * 0.215, 0.12, 0.17])
    ax.imshow(patch.reshape(patch_size, patch_size, -1)[..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"#{i}", fontsize=7, pad=1)
fig.text(0.72, 0.94, f"{len(patches)} patches = {len(patches)} tokens", ha="center")
if FIGURES_DIR:
    Path(FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES_DIR) / "patches.png", dpi=80)
plt.show()

# %% [markdown]
# ## The model

# %%
set_seed(SEED)  # before building: reproducible initial weights
model = keras_vit.create_model(PRESET, num_classes=data.num_classes, class_names=data.class_names,
                               **MODEL_OVERRIDES)
model.summary()

# %% [markdown]
# ## Training with the library's recipe
# `fit` compiles the model, holds out a seeded validation split, augments the training images in the
# input pipeline, checkpoints every epoch (and resumes if interrupted) and writes `model.keras` and
# `history.json` to the output folder. It uses the GPU when Keras sees one.

# %%
config = TrainConfig(epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, seed=SEED,
                     output_dir=OUTPUT_DIR, verbose=2)
record = fit(model, data, config)
print(f"\ntrained on {record['device']} in {record['train_time_s']:.0f} s; "
      f"test accuracy {record['test']['accuracy']:.2%}")

# %%
history = record["history"]
epochs = history["epoch"]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
ax_loss.plot(epochs, history["loss"], "o-", label="train")
ax_acc.plot(epochs, history["accuracy"], "o-", label="train")
if "val_loss" in history:
    ax_loss.plot(epochs, history["val_loss"], "s--", label="validation")
    ax_acc.plot(epochs, history["val_accuracy"], "s--", label="validation")
ax_loss.set(title="Loss (with label smoothing)", xlabel="epoch")
ax_acc.set(title="Accuracy", xlabel="epoch")
for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Evaluation on the test split

# %%
result = evaluate(model, data)
print(f"test accuracy {result['accuracy']:.2%}, cross-entropy {result['loss']:.4f} on {result['images']:,} images")

logits = model.predict(preprocess(data.x_test, model.preprocessing), batch_size=256, verbose=0)
probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
predicted = probabilities.argmax(axis=1)
assert np.isclose((predicted == data.y_test).mean(), result["accuracy"])

# %%
k = data.num_classes
confusion = np.zeros((k, k), dtype=int)
np.add.at(confusion, (data.y_test, predicted), 1)
fig, ax = plt.subplots(figsize=(5.5, 5))
ax.imshow(confusion, cmap="Blues")
for i in range(k):
    for j in range(k):
        if confusion[i, j]:
            ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7,
                    color="white" if confusion[i, j] > confusion.max() / 2 else "black")
ax.set(xticks=range(k), yticks=range(k), xticklabels=data.class_names, yticklabels=data.class_names,
       xlabel="predicted", ylabel="true", title="Confusion matrix (test split)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The test images the model got wrong with the highest confidence:

# %%
wrong = np.flatnonzero(predicted != data.y_test)
worst = wrong[np.argsort(-probabilities[wrong].max(axis=1))][:12]
print(f"{len(wrong)} of {len(data.y_test)} test images misclassified")
if len(worst):
    fig, axes = plt.subplots(2, 6, figsize=(9, 4.4))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(data.x_test[i][..., 0], cmap="gray")
        ax.set_title(f"true {data.class_names[data.y_test[i]]}, said {data.class_names[predicted[i]]}\n"
                     f"p={probabilities[i].max():.2f}", fontsize=8)
    fig.suptitle("Most confidently wrong")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## The saved model
# `fit` wrote `model.keras` to the output folder; it loads back (in Keras' safe mode) and gives the same logits.

# %%
model_path = Path(OUTPUT_DIR) / "model.keras"
reloaded = keras.saving.load_model(model_path)
sample = preprocess(data.x_test[:64], model.preprocessing)
diff = np.abs(keras.ops.convert_to_numpy(reloaded(sample)) - keras.ops.convert_to_numpy(model(sample))).max()
print(f"{model_path} ({model_path.stat().st_size / 1e6:.2f} MB), reloaded: max abs logit diff {diff:.2g}")
print("files:", sorted(p.name for p in Path(OUTPUT_DIR).iterdir()))
