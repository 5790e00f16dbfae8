"""Reading one vector per image out of the token sequence."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vit")
class TokenPooling(keras.layers.Layer):
    """``(B, T, D) -> (B, D)``: the class token (``"token"``) or the mean of the patch tokens (``"avg"``).

    Args:
        mode: ``"token"`` or ``"avg"``.
        num_prefix_tokens: leading non-patch tokens, excluded from the average.
    """

    def __init__(self, mode: str = "token", num_prefix_tokens: int = 1, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("token", "avg"):
            raise ValueError(f"pooling must be 'token' or 'avg', got {mode!r}.")
        if mode == "token" and num_prefix_tokens < 1:
            raise ValueError("Class-token pooling needs a class token (num_prefix_tokens >= 1).")
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, tokens):
        if self.mode == "token":
            return tokens[:, 0]
        return ops.mean(tokens[:, self.num_prefix_tokens :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens}
