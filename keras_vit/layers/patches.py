"""Cutting images into non-overlapping square patches."""

from __future__ import annotations

import keras
from keras import ops

from keras_vit.errors import UserInputError


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchExtractor(keras.layers.Layer):
    """Split images ``(B, H, W, C)`` into ``(B, N, P*P*C)`` flattened ``P x P`` patches.

    Patches are taken in row-major order (left to right, then top to bottom), and each patch is
    flattened as ``(row, column, channel)``: with ``P = 7`` a 28x28x1 image gives 16 patches of 49
    values. This is the layout of a ``P x P`` convolution kernel ``(P, P, C, D)`` reshaped to
    ``(P*P*C, D)``, which is how timm's ``patch_embed.proj`` weights map onto the projection.

    Args:
        patch_size: side ``P`` of each square patch, in pixels.
    """

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        if int(patch_size) < 1:
            raise UserInputError(f"patch_size must be a positive integer, got {patch_size!r}.")
        self.patch_size = int(patch_size)

    def _grid(self, input_shape):
        if len(input_shape) != 4:
            raise UserInputError(
                f"PatchExtractor expects images of shape (batch, height, width, channels), "
                f"got shape {tuple(input_shape)}."
            )
        _, height, width, channels = input_shape
        p = self.patch_size
        for side, size in (("height", height), ("width", width)):
            if size is not None and size % p:
                raise UserInputError(
                    f"Image {side} {size} is not a multiple of the patch size {p}: resize or crop the "
                    f"images to a multiple of {p}."
                )
        if height is None or width is None or channels is None:
            raise UserInputError(
                "PatchExtractor needs a known image height, width and channel count "
                f"(got {tuple(input_shape)})."
            )
        return height // p, width // p, channels

    def build(self, input_shape):
        self._grid(input_shape)
        self.built = True

    def call(self, images):
        grid_h, grid_w, channels = self._grid(images.shape)
        p = self.patch_size
        x = ops.reshape(images, (-1, grid_h, p, grid_w, p, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, grid_h * grid_w, p * p * channels))

    def compute_output_shape(self, input_shape):
        grid_h, grid_w, channels = self._grid(input_shape)
        return (input_shape[0], grid_h * grid_w, self.patch_size**2 * channels)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}
