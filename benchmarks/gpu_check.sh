#!/usr/bin/env bash
# The GPU figures in two calls of at most 9 minutes each, on a GPU machine that has PyTorch, JAX and timm but
# no Keras, no TensorFlow and no network (Keras comes as wheels in a carried folder).
#
# Before: build the carry folders where PyPI is reachable (both are git-ignored, each under 64 MiB):
#   DATA=/path/to/data benchmarks/prepare_gpu_carry.sh     # -> .carry/ (wheels + MNIST), .carry_cifar/ (wheels + CIFAR)
# Then, from the repository root on the GPU machine, with the folder copied beside the checkout:
#   call 1, with .carry/:        PART=1 OUT=$OUT bash benchmarks/gpu_check.sh   (allow 540 s)
#     - env.txt: GPU, driver, library versions
#     - gpu_fit.{json,md} + gpu_fit_profiles/: ViT-B/16, batch 128, bf16: `fit` over the input pipeline and the pure
#       step for keras-vit on JAX and PyTorch (and TensorFlow if present) against timm eager and timm
#       torch.compile (DataLoader, pinned memory, non_blocking copies, AMP bf16, AdamW); a one-step profile per
#       side (torch.profiler tables, a jax.profiler trace)
#     - convstem/gpu_fit.{json,md}: vit_mnist_convstem, batch 128, digits on the device: input_wait = the share of
#       an epoch the pure step does not explain (target < 10 %)
#   call 2, with .carry_cifar/:  PART=2 OUT=$OUT bash benchmarks/gpu_check.sh   (allow 540 s)
#     - cifar.log, cifar_history.json: the CIFAR-10 recipe (vit_cifar_convstem, 6 minutes of training at most) on
#       the JPEG copy (lossy, q75; its test images carried re-encoded at q95: say so beside the figure)
# Knobs: MODEL, BATCH, STEPS, SIDES, FIT_TIMEOUT, CIFAR_EPOCHS, CIFAR_TIMEOUT (small values check the script).
set -u -o pipefail
: "${OUT:?set OUT to the results folder}"
PART=${PART:-1}
CARRY=${CARRY:-$([ "$PART" = 2 ] && echo .carry_cifar || echo .carry)}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    --find-links "$CARRY/wheels" keras absl-py namex rich markdown-it-py mdurl pygments packaging optree \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
backend=jax
KERAS_BACKEND=jax python3 -c "import keras; keras.ops.ones(2)" >/dev/null 2>&1 || backend=torch

if [ "$PART" = 1 ]; then
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "
import importlib
for name in ('keras', 'torch', 'jax', 'jaxlib', 'timm', 'numpy', 'tensorflow'):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:
        print(name, 'absent:', type(err).__name__)"
  } 2>&1 | tee "$OUT/env.txt"
  # 1. ViT-B/16 fit vs timm, with profiles (about 90 s a side: start, compile, 2 epochs, steps, profile).
  timeout "${FIT_TIMEOUT:-400}" python3 -m benchmarks.gpu_fit --model "${MODEL:-vit_base_patch16_224}" \
    --batch "${BATCH:-128}" --steps "${STEPS:-20}" --precision bfloat16 --timeout 120 --profile \
    --sides "${SIDES:-jax,torch,timm,timm-compile,tensorflow}" --output-dir "$OUT" 2>&1 | tee "$OUT/gpu_fit.log"
  # 2. vit_mnist_convstem: how long the step waits on input, digits augmentation on the device.
  timeout 100 python3 -m benchmarks.gpu_fit --model vit_mnist_convstem --batch 128 --steps 100 \
    --precision bfloat16 --augment digits --sides "$backend" --timeout 95 --profile \
    --output-dir "$OUT/convstem" 2>&1 | tee "$OUT/convstem.log"
else
  # 3. The CIFAR-10 recipe: rebuild the cifar10_jpeg.npz layout from the carried JPEG bytes, then train.
  data=/tmp/cifar_data
  mkdir -p $data/cifar10_jpeg && cp "$CARRY/data/cifar10_jpeg/cifar10_jpeg_train_bytes.npz" $data/cifar10_jpeg/
  python3 - "$CARRY/data/cifar10_jpeg/cifar10_test_bytes.npz" $data/cifar10_jpeg/cifar10_jpeg.npz <<'PY' || exit 1
import io, sys
import numpy as np
from PIL import Image
with np.load(sys.argv[1], allow_pickle=False) as z:
    blob, offsets, y_test = z["jpeg_bytes"], z["offsets"], z["y_test"]
x_test = np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                   for i in range(len(offsets) - 1)])
# x_train: a placeholder subset; the loader decodes the full 50,000 from cifar10_jpeg_train_bytes.npz
np.savez(sys.argv[2], x_train=x_test[:100], y_train=y_test[:100], x_test=x_test, y_test=y_test)
PY
  KERAS_BACKEND=$backend timeout "${CIFAR_TIMEOUT:-480}" python3 -m keras_vit.cli.main train \
    --preset vit_cifar_convstem --dataset cifar10 --data-dir $data --epochs "${CIFAR_EPOCHS:-30}" \
    --batch-size 256 --learning-rate 2e-3 --warmup-epochs 2 --weight-decay 0.05 --augment natural \
    --mixed-precision bfloat16 --tta flip --validation-split 0.02 --no-checkpoints --quiet \
    --output /tmp/cifar_gpu 2>&1 | tee "$OUT/cifar.log"
  cp /tmp/cifar_gpu/history.json "$OUT/cifar_history.json" 2>/dev/null || true
fi
