#!/usr/bin/env bash
# The GPU figures in one call (the `device` tool's machines: PyTorch, JAX and timm installed, no Keras, no
# TensorFlow, no network). Run from the repository root with OUT set to a folder for the results:
#   - WHEELS (default .whl, optional): wheels to install first (keras, namex, optree for that machine's Python);
#   - DATA_DIR (default .carry/data): holds mnist/mnist.npz for the MNIST fit;
#   - MODEL, BATCH, SIDES, MNIST_EPOCHS, MNIST_TIMEOUT: what to run (defaults below; tiny ones check the script).
# Writes env.txt, gpu_training.{json,md}, bench.log, mnist.log and mnist_history.json into $OUT.
set -u -o pipefail
: "${OUT:?set OUT to the results folder}"
DATA_DIR=${DATA_DIR:-.carry/data}
WHEELS=${WHEELS:-.whl}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 - <<'EOF'
import importlib
for name in ("keras", "torch", "jax", "timm", "onnxruntime", "tensorflow"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:
        print(name, "absent:", type(err).__name__)
EOF
} 2>&1 | tee "$OUT/env.txt"

# 1. ViT-B/16 training images/s, bfloat16 mixed precision: timm AMP vs keras-vit on each backend.
timeout "${BENCH_TIMEOUT:-330}" python3 -m benchmarks.gpu_training --model "${MODEL:-vit_base_patch16_224}" \
  --batch "${BATCH:-128}" --precision bfloat16 \
  --sides "${SIDES:-timm,jax,torch-eager,torch,tensorflow}" --steps 20 --warmup 3 --timeout 150 \
  --output-dir "$OUT" 2>&1 | tee "$OUT/bench.log"

# 2. The MNIST hybrid recipe of the README on the GPU (JAX if Keras runs on it, else PyTorch).
backend=jax
KERAS_BACKEND=jax python3 -c "import keras; keras.ops.ones(2)" >/dev/null 2>&1 || backend=torch
KERAS_BACKEND=$backend timeout "${MNIST_TIMEOUT:-200}" python3 -m keras_vit.cli.main train \
  --preset vit_mnist_convstem --dataset mnist --data-dir "$DATA_DIR" --epochs "${MNIST_EPOCHS:-12}" \
  --batch-size 128 --augment digits --no-checkpoints --quiet --output /tmp/mnist_gpu 2>&1 | tee "$OUT/mnist.log"
cp /tmp/mnist_gpu/history.json "$OUT/mnist_history.json" 2>/dev/null || true
