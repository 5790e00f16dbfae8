#!/usr/bin/env bash
# Build the folders that benchmarks/gpu_check.sh needs on a GPU machine with PyTorch, JAX and timm but no
# Keras, no TensorFlow and no network. Each `run` call carries at most 64 MiB, so there are two (both are
# git-ignored, never commit them):
#   .carry/        call 1: wheels/ (Keras and its pure-Python or small binary dependencies, this repository's
#                  own wheel) and data/mnist/mnist.npz
#   .carry_cifar/  call 2: the same wheels/ and data/cifar10_jpeg/: the 50,000 training JPEGs as they are
#                  (cifar10_jpeg_train_bytes.npz) and the 10,000 test images as JPEG bytes too
#                  (cifar10_test_bytes.npz, re-encoded at quality 95 from the q75 copy's decoded images: a
#                  second lossy step, small, but say so beside any figure); gpu_check.sh turns them back
#                  into the cifar10_jpeg.npz layout with Pillow (a torchvision dependency) on the device.
# Usage, from the repository root, with network access to PyPI:
#   DATA=/path/to/data PY_VERSIONS="3.10 3.11 3.12" benchmarks/prepare_gpu_carry.sh
# DATA holds mnist/mnist.npz and cifar10_jpeg/ (see keras_vit.datasets). PY_VERSIONS: the device Pythons
# to fetch compiled wheels for. Prints each folder's size and fails if one exceeds 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?set DATA to the folder holding mnist/ and cifar10_jpeg/}
PY_VERSIONS=${PY_VERSIONS:-"3.10 3.11 3.12"}
PYTHON=${PYTHON:-python3}
LIMIT_KIB=$((64 * 1024))
rm -rf .carry .carry_cifar
mkdir -p .carry/wheels .carry/data/mnist .carry_cifar/data/cifar10_jpeg

# Keras and the dependencies a PyTorch+JAX machine may lack (numpy and ml_dtypes come with JAX; h5py is
# left out: Keras imports it lazily, for legacy .h5 files only).
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .carry/wheels \
  keras absl-py namex rich markdown-it-py mdurl pygments packaging
for version in $PY_VERSIONS; do  # compiled: one wheel per Python version
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .carry/wheels optree
done
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .carry/wheels . >/dev/null
cp -r .carry/wheels .carry_cifar/wheels

cp "$DATA/mnist/mnist.npz" .carry/data/mnist/
cp "$DATA/cifar10_jpeg/cifar10_jpeg_train_bytes.npz" .carry_cifar/data/cifar10_jpeg/
"$PYTHON" - "$DATA/cifar10_jpeg/cifar10_jpeg.npz" .carry_cifar/data/cifar10_jpeg/cifar10_test_bytes.npz <<'PY'
import io
import sys

import numpy as np
from PIL import Image

with np.load(sys.argv[1], allow_pickle=False) as z:
    x_test, y_test = z["x_test"], z["y_test"]
blobs = []
for image in x_test:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
offsets = np.cumsum([0] + [len(b) for b in blobs])
np.savez(sys.argv[2], jpeg_bytes=np.concatenate(blobs), offsets=offsets, y_test=y_test)
PY

status=0
for folder in .carry .carry_cifar; do
  size=$(du -sk "$folder" | cut -f1)
  echo "$folder: $((size / 1024)) MiB ($(ls "$folder/wheels" | wc -l) wheels)"
  [ "$size" -le "$LIMIT_KIB" ] || { echo "$folder is over 64 MiB" >&2; status=1; }
done
exit $status
