"""A convolutional stem: 3x3 convolutions (mostly stride 2) in place of the first steps of patchifying."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from keras_vit.errors import UserInputError


@keras.saving.register_keras_serializable(package="keras_vit")
class ConvStem(keras.layers.Layer):
    """``Conv 3x3 -> BatchNorm -> ReLU`` per entry of ``filters``: ``(B, H, W, C) -> (B, H/s, W/s, F)``.

    "Early convolutions help transformers see better" (Xiao et al., 2021): a few strided convolutions
    before the tokens make a ViT converge faster and less sensitively to its optimiser settings than
    one large patchifying projection. A stage of stride 2 halves the height and width (``"same"``
    padding), one of stride 1 keeps them (for small images, where halving the first layer's input
    throws detail away); ``s`` is the product of the strides. :class:`keras_vit.VisionTransformer`
    then cuts the stem's output into patches (``patch_size / s`` of its pixels each) and projects them
    to tokens as usual.

    Args:
        filters: output channels of each stage, e.g. ``(32, 64)``.
        kernel_size: side of the square kernels.
        strides: stride of each stage, 1 or 2 (default: 2 for every stage, e.g. ``s = 4`` for two).
    """

    def __init__(self, filters: Sequence[int], kernel_size: int = 3, strides: Sequence[int] | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        if not self.filters or min(self.filters) < 1:
            raise UserInputError(f"ConvStem needs one or more positive filter counts, got {list(filters)!r}.")
        self.strides = _checked_strides(self.filters, strides)
        self.kernel_size = int(kernel_size)
        policy = self.dtype_policy
        self.stages = [
            (
                keras.layers.Conv2D(f, self.kernel_size, strides=s, padding="same", use_bias=False,
                                    name=f"conv_{i}", dtype=policy),
                keras.layers.BatchNormalization(epsilon=1e-5, name=f"norm_{i}", dtype=policy),
            )
            for i, (f, s) in enumerate(zip(self.filters, self.strides, strict=True))
        ]

    @property
    def stride(self) -> int:
        """How much the stem shrinks each side of the image."""
        return math.prod(self.strides)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, norm in self.stages:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        self.built = True

    def call(self, images, training=None):
        x = images
        for conv, norm in self.stages:
            x = keras.ops.relu(norm(conv(x), training=training))
        return x

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        shrink = self.stride
        return (
            batch,
            None if height is None else -(-height // shrink),
            None if width is None else -(-width // shrink),
            self.filters[-1],
        )

    def get_config(self):
        return {**super().get_config(), "filters": list(self.filters), "kernel_size": self.kernel_size,
                "strides": list(self.strides)}


def _checked_strides(filters: Sequence[int], strides: Sequence[int] | None) -> list[int]:
    """``strides`` checked against ``filters`` (1 or 2 per stage); ``None`` means 2 for every stage."""
    if strides is None:
        return [2] * len(filters)
    strides = [int(s) for s in strides]
    if len(strides) != len(filters) or any(s not in (1, 2) for s in strides):
        raise UserInputError(
            f"ConvStem needs a stride of 1 or 2 for each of its {len(filters)} stages, got {strides!r}."
        )
    return strides
