"""Patch embedding: linear projection, class token, learned positional embedding."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_vit.posembed import resample_position_embedding


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchEncoder(keras.layers.Layer):
    """Project flattened patches ``(B, N, P*P*C)`` to ``(B, N + 1, D)`` tokens.

    A dense projection maps each patch to ``hidden_dim``; a learned class token is prepended (when
    ``class_token`` is true) and a learned positional embedding for all positions is added.

    When weights saved for another patch grid are loaded (a model built for a new image size, or
    fine-tuning at a new resolution), the grid part of the stored positional embedding is resized
    bicubically once, at load time, as timm does; the class-token row is kept.

    Args:
        num_patches: number of patches ``N`` per image.
        hidden_dim: token width ``D``.
        grid_size: ``(rows, cols)`` of the patch grid; defaults to a square grid of ``num_patches``.
        class_token: prepend a learned class token.
        dropout: dropout rate applied to the tokens after adding the positional embedding.
    """

    def __init__(
        self,
        num_patches: int,
        hidden_dim: int,
        grid_size: tuple[int, int] | None = None,
        class_token: bool = True,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_patches = int(num_patches)
        self.hidden_dim = int(hidden_dim)
        if grid_size is None:
            side = int(round(self.num_patches**0.5))
            grid_size = (side, self.num_patches // side)
        self.grid_size = tuple(int(s) for s in grid_size)
        if self.grid_size[0] * self.grid_size[1] != self.num_patches:
            raise ValueError(f"grid_size {self.grid_size} does not hold {self.num_patches} patches.")
        self.class_token = bool(class_token)
        self.dropout_rate = float(dropout)
        self.num_prefix_tokens = 1 if self.class_token else 0
        self.projection = keras.layers.Dense(self.hidden_dim, name="projection", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.projection.build(input_shape)
        if self.class_token:
            self.cls_token = self.add_weight(
                shape=(1, 1, self.hidden_dim),
                initializer=keras.initializers.RandomNormal(stddev=1e-6),
                name="class_token",
            )
        self.position_embedding = self.add_weight(
            shape=(1, self.num_patches + self.num_prefix_tokens, self.hidden_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="position_embedding",
        )
        self.built = True

    def call(self, patches, training=None):
        tokens = self.projection(patches)
        if self.class_token:
            cls = ops.zeros_like(tokens[:, :1, :]) + ops.cast(self.cls_token, tokens.dtype)
            tokens = ops.concatenate([cls, tokens], axis=1)
        tokens = tokens + ops.cast(self.position_embedding, tokens.dtype)
        return self.dropout(tokens, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches + self.num_prefix_tokens, self.hidden_dim)

    def load_own_variables(self, store):
        """Load weights, resizing a positional embedding saved for another grid."""
        arrays = {key: np.asarray(store[key]) for key in store.keys()}
        # Own variables are (class_token, position_embedding); the projection loads itself.
        names = [v.name for v in self._trainable_variables + self._non_trainable_variables]
        position_key = str(names.index("position_embedding"))
        stored = arrays.get(position_key)
        if stored is not None and tuple(stored.shape) != tuple(self.position_embedding.shape):
            arrays[position_key] = resample_position_embedding(
                stored, self.grid_size, num_prefix_tokens=self.num_prefix_tokens
            )
        super().load_own_variables(arrays)

    def get_config(self):
        return {
            **super().get_config(),
            "num_patches": self.num_patches,
            "hidden_dim": self.hidden_dim,
            "grid_size": list(self.grid_size),
            "class_token": self.class_token,
            "dropout": self.dropout_rate,
        }
