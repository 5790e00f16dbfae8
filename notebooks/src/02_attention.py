# %% [markdown]
# # 2. What the model looks at: attention maps and attention rollout
#
# A ViT's class token gathers information from the patch tokens through self-attention. The model
# exposes its attention weights with `model.attention_scores(images)` (one `(batch, heads, tokens,
# tokens)` array per block, token 0 = class token), and `keras_vit.attention_maps` turns them into
# pictures:
#
# * `cls_attention_maps`: how much the class token attends to each patch, per head, in one block;
# * `rollout_cls_map`: attention rollout (Abnar & Zuidema, 2020) - the heads averaged, the residual
#   connection counted as `0.5 * A + 0.5 * I`, and the blocks multiplied from first to last - which
#   estimates how much each input patch flows into the class token at the end.
#
# It uses the model saved by notebook 1, or trains a small one when that file is not there.

# %% tags=["parameters"]
MODEL_PATH = "outputs/01_train_vit/model.keras"  # written by 01_train_vit.ipynb
DATASET = "mnist"            # test images from here (falls back to the packaged sample)
DATA_DIR = None
NUM_IMAGES = 4               # images to draw
FALLBACK_EPOCHS = 3          # when MODEL_PATH is missing: train vit_mnist on the packaged sample this long
SEED = 0
FIGURES_DIR = None           # when set, the rollout picture is also saved there as attention_rollout.png

# %%
# %matplotlib inline
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np

import keras_vit
from keras_vit.attention_maps import (
    cls_attention_maps,
    grid_size,
    normalize_maps,
    rollout_cls_map,
    upsample_maps,
)
from keras_vit.datasets import load_dataset, preprocess
from keras_vit.errors import UserInputError
from keras_vit.training import TrainConfig, fit, set_seed

try:
    data = load_dataset(DATASET, DATA_DIR)
except UserInputError as err:
    print(f"{DATASET} is not available here ({err})\n-> using the packaged MNIST sample instead")
    data = load_dataset("sample")

if Path(MODEL_PATH).is_file():
    model = keras.saving.load_model(MODEL_PATH)
    print(f"loaded {MODEL_PATH}")
else:
    print(f"{MODEL_PATH} not found: training vit_mnist on the packaged sample for {FALLBACK_EPOCHS} epochs")
    set_seed(SEED)
    model = keras_vit.create_model("vit_mnist")
    fit(model, load_dataset("sample"), TrainConfig(epochs=FALLBACK_EPOCHS, seed=SEED, verbose=2))
grid = grid_size(model)
print(f"{model.name}: {model.depth} blocks x {model.num_heads} heads, {grid[0]}x{grid[1]} patches of "
      f"{model.patch_size}x{model.patch_size} + 1 class token")

# %% [markdown]
# A few test images (the first one of several classes), and the attention scores of every block:

# %%
picks = [int(np.flatnonzero(data.y_test == c)[0]) for c in range(min(NUM_IMAGES, data.num_classes))]
raw = data.x_test[picks]
images = preprocess(raw, model.preprocessing)
logits = keras.ops.convert_to_numpy(model(images, training=False))
predicted = logits.argmax(axis=1)
scores = model.attention_scores(images)
print(f"{len(scores)} blocks, each {tuple(scores[0].shape)} (images, heads, tokens, tokens)")
for i, p in zip(picks, predicted):
    print(f"test image {i}: label {data.class_names[data.y_test[i]]}, predicted {data.class_names[p]}")


def show(ax, image, heat=None, title=None):
    """An image, with a patch-grid heat map drawn over it when given."""
    ax.imshow(image[..., 0], cmap="gray")
    if heat is not None:
        ax.imshow(upsample_maps(heat, model.patch_size), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=8)
    ax.axis("off")


# %% [markdown]
# ## Class-token attention per head, last block
# Each head of the last block, how much the class token attends to each of the 16 patches (scaled to
# [0, 1] per map). Different heads look at different parts of the stroke.

# %%
per_head = normalize_maps(cls_attention_maps(scores[-1], grid))  # (images, heads, rows, cols)
heads = per_head.shape[1]
fig, axes = plt.subplots(len(raw), heads + 1, figsize=(1.7 * (heads + 1), 1.8 * len(raw)), squeeze=False)
for row, (image, maps) in enumerate(zip(raw, per_head)):
    show(axes[row, 0], image, title="image" if row == 0 else None)
    for h in range(heads):
        show(axes[row, h + 1], image, maps[h], title=f"head {h}" if row == 0 else None)
fig.suptitle(f"Class-token attention of block {len(scores) - 1} (last), per head")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Class-token attention, every block (heads averaged)
# Early blocks spread their attention; later ones concentrate on the strokes.

# %%
fig, axes = plt.subplots(len(raw), len(scores), figsize=(1.6 * len(scores), 1.7 * len(raw)), squeeze=False)
for b, block_scores in enumerate(scores):
    mean_maps = normalize_maps(cls_attention_maps(block_scores, grid).mean(axis=1))
    for row, image in enumerate(raw):
        show(axes[row, b], image, mean_maps[row], title=f"block {b}" if row == 0 else None)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Attention rollout over all blocks

# %%
rollout = rollout_cls_map(scores, grid)  # (images, rows, cols): share of each patch in the class token
fig, axes = plt.subplots(2, len(raw), figsize=(2.2 * len(raw), 4.6), squeeze=False)
for col, (i, image, heat) in enumerate(zip(picks, raw, normalize_maps(rollout))):
    show(axes[0, col], image, title=f"label {data.class_names[data.y_test[i]]}, "
                                    f"predicted {data.class_names[predicted[col]]}")
    show(axes[1, col], image, heat, title="attention rollout")
fig.suptitle(f"Attention rollout through {len(scores)} blocks")
fig.tight_layout()
if FIGURES_DIR:
    Path(FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(FIGURES_DIR) / "attention_rollout.png", dpi=80)
plt.show()
print("rolled-out share of the class token that comes from the patches:",
      np.round(rollout.sum(axis=(1, 2)), 3))
