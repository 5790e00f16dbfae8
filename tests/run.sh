#!/usr/bin/env bash
# The test command (README and CI): lint, the whole suite on TensorFlow, then the tests marked
# `backends` again on JAX and on PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check keras_vit export tests benchmarks
KERAS_BACKEND=tensorflow python -m pytest -q "$@"
KERAS_BACKEND=jax python -m pytest -q -m backends "$@"
KERAS_BACKEND=torch python -m pytest -q -m backends "$@"
