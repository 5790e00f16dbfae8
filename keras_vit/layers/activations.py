"""Activations written so that every backend and every exporter sees the same maths."""

from __future__ import annotations

import math

from keras import ops

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def gelu_erf(x):
    """Exact GELU, ``0.5 * x * (1 + erf(x / sqrt(2)))``, as timm and PyTorch compute it.

    Keras' own exact GELU lowers to TensorFlow's ``Erfc``, which tf2onnx writes as an ONNX op that does
    not exist; ``erf`` converts to the standard ``Erf`` op and is the same function.
    """
    x = ops.convert_to_tensor(x)
    return 0.5 * x * (1.0 + ops.erf(x * _INV_SQRT2))
