"""Non-trivial weights for a Keras model, so that exports and graph rewrites are checked on real numbers."""

from __future__ import annotations

import math

import numpy as np


def perturb_weights(model, seed: int = 0) -> None:
    """Give every weight of a Keras ``model`` a non-trivial random value, in place.

    Zero biases and unit LayerNorms (Keras' initial values) would let a rewrite that drops or swaps them
    still match. Kernels get ``N(0, 1/fan_in)``, LayerNorm scales ``1 + N(0, 0.2)``, other vectors
    ``N(0, 0.1)`` and the class token ``N(0, 0.5)``.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        noise = rng.standard_normal(shape).astype("float32")
        if variable.name == "gamma":
            variable.assign(1.0 + 0.2 * noise)
        elif len(shape) == 2:
            variable.assign(noise / math.sqrt(shape[0]))
        else:
            variable.assign(0.1 * noise if variable.name != "class_token" else 0.5 * noise)
