# %% [markdown]
# # 4. Fine-tune a pretrained ViT
#
# A Vision Transformer trained from scratch on a small dataset loses to a CNN: it has to learn from a few
# thousand images what a convolution assumes (locality, translation). Pretrained on ImageNet, it starts
# with that knowledge. This notebook loads timm's ViT-Ti/16 pretrained on ImageNet-21k and fine-tuned on
# ImageNet-1k **by name** from the Hugging Face Hub (`keras_vit.create_model(NAME, pretrained=True)`),
# gives it a new 10-class head and a smaller input (the positional embedding is resized on load),
# fine-tunes it with the library's recipe (`keras_vit.training.fit`), and compares it with the same
# architecture trained from scratch for the same number of steps. It saves the fine-tuned `model.keras`.
#
# The weights come through `huggingface_hub` and its cache: the first run downloads them (about 22 MB for
# ViT-Ti/16), later runs read the cache without asking the Hub. Offline, `HF_HUB_OFFLINE=1` with
# `HF_HOME` (or `HF_HUB_CACHE`) pointing at a cache that holds the repository works the same way.
#
# Every cell runs in order from a fresh kernel. The next cell holds the parameters (tests run it with
# tiny values).

# %% tags=["parameters"]
PRETRAINED = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"   # a name from keras_vit.list_pretrained()
DATASET = "sample"       # "sample": the packaged MNIST digits; "cifar10", "mnist"...: $KERAS_VIT_DATA (or DATA_DIR)
DATA_DIR = None          # folder holding the dataset; None: $KERAS_VIT_DATA, else download
IMAGE_SIZE = 64          # model input (the checkpoint's is 224): small enough to fine-tune on a CPU
EPOCHS = 3
TRAIN_SAMPLES = 2000     # None: the whole training split; an int: its first N images
TEST_SAMPLES = 1000      # None: the whole test split
BATCH_SIZE = 64
FINETUNE_LR = 1e-4       # peak learning rate for the pretrained model (small: keep what it knows)
SCRATCH_LR = 1e-3        # peak learning rate for the same architecture from random weights
SEED = 0
OUTPUT_DIR = "outputs/04_finetune_pretrained"   # the fine-tuned model.keras and history.json go here

# %%
# %matplotlib inline
from dataclasses import replace
from pathlib import Path

import keras
import matplotlib.pyplot as plt

import keras_vit
from keras_vit.datasets import convert_channels, load_dataset, preprocess, resize_images
from keras_vit.errors import UserInputError
from keras_vit.training import TrainConfig, describe_device, evaluate, fit, set_seed
from keras_vit.weights import PRETRAINED as KNOWN_CHECKPOINTS

print(f"keras-vit {keras_vit.__version__}, Keras {keras.__version__}, backend {keras.backend.backend()}")
print("training device:", describe_device())

# %% [markdown]
# ## The data
# A few thousand images: the regime where pretraining matters. Without the named dataset (no
# `$KERAS_VIT_DATA`, no network) the packaged MNIST sample is used. Digits are gray; the pretrained model
# takes RGB, so `fit` and `evaluate` repeat the gray channel three times and resize the images to the
# model's input (they print a note when they do).

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

fig, axes = plt.subplots(2, 8, figsize=(8, 2.4))
for ax, image, label in zip(axes.flat, data.x_train, data.y_train):
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    ax.set_title(data.class_names[label], fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The pretrained model, by name
# `keras_vit.list_pretrained()` lists the checkpoints keras-vit knows to load. As published, the model
# classifies 224x224 images into the 1,000 ImageNet classes, with the normalisation it was trained with;
# both come from the repository's `config.json` into the model's metadata (and into its exports).

# %%
print(f"{len(keras_vit.list_pretrained())} known checkpoints, e.g.:", *keras_vit.list_pretrained("tiny"), sep="\n  ")
if PRETRAINED in KNOWN_CHECKPOINTS:
    print(f"\n{PRETRAINED}:", KNOWN_CHECKPOINTS[PRETRAINED].as_dict())

published = keras_vit.create_model(PRETRAINED, pretrained=True)
print(f"\nas published: {published.image_size[0]}x{published.image_size[1]}x{published.channels} input, "
      f"{published.num_classes} classes, {published.count_params():,} parameters")
print("preprocessing:", published.preprocessing)
if published.class_names:
    print("labels:", ", ".join(published.class_names[:8]), "...")
del published

# %% [markdown]
# For our data: a new, zero-initialised 10-class head (with the dataset's class names as labels) and a
# `IMAGE_SIZE` input; the grid of learned positional embeddings (14x14 at 224 pixels) is resized
# bicubically to the new patch grid. The transformer blocks keep their pretrained weights.

# %%
model = keras_vit.create_model(PRETRAINED, pretrained=True, num_classes=data.num_classes,
                               image_size=IMAGE_SIZE, class_names=data.class_names)
grid = IMAGE_SIZE // model.patch_size
print(f"fine-tuning model: {model.image_size[0]}x{model.image_size[1]} input = {grid}x{grid} patches, "
      f"{model.num_classes} classes {model.class_names}, preprocessing {model.preprocessing}")

# %% [markdown]
# ## Fine-tuning with the library's recipe
# `fit` compiles the model (AdamW, warm-up + cosine decay, label smoothing), holds out a seeded validation
# split, trains, reports the test accuracy and writes `model.keras` and `history.json` to `OUTPUT_DIR`.

# %%
def recipe(learning_rate, output_dir):
    return TrainConfig(epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=learning_rate, seed=SEED,
                       output_dir=output_dir, checkpoints=False, verbose=2)


finetuned = fit(model, data, recipe(FINETUNE_LR, OUTPUT_DIR))
print(f"\nfine-tuned in {finetuned['train_time_s']:.0f} s; test accuracy {finetuned['test']['accuracy']:.2%}")

# %% [markdown]
# ## The same architecture from scratch
# The same model (same configuration, same preprocessing) with fresh random weights, trained by the same recipe
# for the same number of steps (a higher learning rate suits random weights). Nothing is written for it.

# %%
set_seed(SEED)
scratch_model = keras_vit.VisionTransformer.from_config({**model.get_config(), "name": "vit_from_scratch"})
scratch = fit(scratch_model, data, recipe(SCRATCH_LR, None))
print(f"\nfrom scratch in {scratch['train_time_s']:.0f} s; test accuracy {scratch['test']['accuracy']:.2%}")

# %% [markdown]
# ## From scratch vs pretrained
# **The figures below depend on the weights.** With the real checkpoint from the Hub, the pretrained model
# is the one to beat; with a stand-in checkpoint of random weights (as the project's tests use, offline)
# the comparison means nothing, and this notebook claims no result of its own: read the table your run
# prints.

# %%
rows = [("from scratch", scratch), ("pretrained " + PRETRAINED, finetuned)]
steps = {name: len(record["history"]["epoch"]) for name, record in rows}
print(f"{data.name}: {len(data.x_train):,} training images, {len(data.x_test):,} test images, "
      f"{EPOCHS} epochs of batch {BATCH_SIZE} each\n")
print(f"| {'model':<52} | epochs | test accuracy | test loss | train time |")
print(f"|{'-' * 54}|--------|---------------|-----------|------------|")
for name, record in rows:
    print(f"| {name:<52} | {steps[name]:>6} | {record['test']['accuracy']:>13.2%} | "
          f"{record['test']['loss']:>9.4f} | {record['train_time_s']:>8.0f} s |")

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
for (name, record), style in zip(rows, ("s--", "o-")):
    history = record["history"]
    label = name.split(" ")[0]
    ax_loss.plot(history["epoch"], history["loss"], style, label=label)
    if "val_accuracy" in history:
        ax_acc.plot(history["epoch"], history["val_accuracy"], style, label=label)
ax_loss.set(title="Training loss (with label smoothing)", xlabel="epoch")
ax_acc.set(title="Validation accuracy", xlabel="epoch")
for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The saved model
# `fit` wrote the fine-tuned `model.keras`; it loads back (Keras' safe mode) with its 10 labels and the
# pretrained normalisation, and gives the same test accuracy.

# %%
model_path = Path(OUTPUT_DIR) / "model.keras"
reloaded = keras.saving.load_model(model_path)
again = evaluate(reloaded, data)
print(f"{model_path} ({model_path.stat().st_size / 1e6:.1f} MB): {reloaded.num_classes} classes "
      f"{reloaded.class_names}, test accuracy {again['accuracy']:.2%}")

images = resize_images(convert_channels(data.x_test[:8], reloaded.channels), reloaded.image_size)
predicted = keras.ops.convert_to_numpy(reloaded(preprocess(images, reloaded.preprocessing))).argmax(-1)
print("first test images: true", [data.class_names[i] for i in data.y_test[:8]],
      "\n                   said", [reloaded.class_names[i] for i in predicted])
