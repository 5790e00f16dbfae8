"""A convolutional stem: stride-2 3x3 convolutions in place of the first steps of patchifying."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_vit.errors import UserInputError


@keras.saving.register_keras_serializable(package="keras_vit")
class ConvStem(keras.layers.Layer):
    """``Conv 3x3 / 2 -> BatchNorm -> ReLU`` per entry of ``filters``: ``(B, H, W, C) -> (B, H/2^k, W/2^k, F)``.

    "Early convolutions help transformers see better" (Xiao et al., 2021): a few strided convolutions
    before the tokens make a ViT converge faster and less sensitively to its optimiser settings than
    one large patchifying projection. Each stage halves the height and width (``"same"`` padding), so
    the image size must be a multiple of ``2**len(filters)``; :class:`keras_vit.VisionTransformer`
    then cuts the stem's output into patches (``patch_size / 2**len(filters)`` of its pixels each)
    and projects them to tokens as usual.

    Args:
        filters: output channels of each stage, e.g. ``(32, 64)`` (stride 4 in all).
        kernel_size: side of the square kernels.
    """

    def __init__(self, filters: Sequence[int], kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        if not self.filters or min(self.filters) < 1:
            raise UserInputError(f"ConvStem needs one or more positive filter counts, got {list(filters)!r}.")
        self.kernel_size = int(kernel_size)
        policy = self.dtype_policy
        self.stages = [
            (
                keras.layers.Conv2D(f, self.kernel_size, strides=2, padding="same", use_bias=False,
                                    name=f"conv_{i}", dtype=policy),
                keras.layers.BatchNormalization(epsilon=1e-5, name=f"norm_{i}", dtype=policy),
            )
            for i, f in enumerate(self.filters)
        ]

    @property
    def stride(self) -> int:
        """How much the stem shrinks each side of the image."""
        return 2 ** len(self.filters)

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
        return {**super().get_config(), "filters": list(self.filters), "kernel_size": self.kernel_size}
