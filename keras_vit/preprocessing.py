"""The preprocessing contract: how raw pixels become a model's input. The one library owner of it.

A model's ``preprocessing`` is ``{"scale": s, "mean": [...], "std": [...]}`` and means

    input = (raw * scale - mean) / std        per channel, in float32, raw pixels on the 0..255 scale

``mean`` and ``std`` hold one value (for every channel) or one per channel: :func:`channel_constants`
is the single broadcasting rule, anything else is a :class:`~keras_vit.errors.UserInputError`.
:func:`adapt_to_channels` is a different step, used when a preset or checkpoint is rebuilt for another
channel count (its per-channel constants are averaged into one).

Plain numpy functions: :func:`preprocess` (the formula), :func:`convert_channels`, :func:`resize_images`,
:func:`softmax`. For the model side, :class:`ImagePreprocessor` is a serializable Keras layer holding
the image size and the constants (keras-hub's ``ImageConverter`` is the pattern); it runs in a model and
in a ``tf.data`` map on every backend. The exported graph (:mod:`keras_vit.export.source`) and the
``tf.data`` training pipeline apply the same :func:`normalize` to their tensors. The edge runtime
(``export/infer.py``) keeps a numpy copy of this contract; ``tests/test_preprocessing.py`` checks that
both compute the same inputs on the same images.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_vit.errors import UserInputError

#: Raw 0..255 pixels to 0..1, nothing else: the default when a preprocessing dict leaves a key out.
DEFAULT_SCALE = 1.0 / 255.0
#: ITU-R 601 luma weights (the same as Pillow's ``convert("L")``), for colour -> grayscale.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _broadcast(values, channels: int, key: str) -> list[float]:
    """The one broadcasting rule: one value is repeated, ``channels`` values are kept, others raise."""
    values = [float(v) for v in np.asarray(values, np.float64).reshape(-1)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserInputError(
            f"The model's preprocessing has {len(values)} {key} values for {channels}-channel images "
            f"(give 1 or {channels})."
        )
    return values


def per_channel(preprocessing: dict[str, Any], channels: int, default_scale: float = DEFAULT_SCALE) -> dict[str, Any]:
    """``{"scale": float, "mean": [C floats], "std": [C floats]}`` (JSON-friendly, Python floats).

    Mean and std hold one value (repeated for every channel) or ``channels`` values; any other length
    raises :class:`UserInputError`.
    """
    return {
        "scale": float(preprocessing.get("scale", default_scale)),
        "mean": _broadcast(preprocessing.get("mean", [0.0]), channels, "mean"),
        "std": _broadcast(preprocessing.get("std", [1.0]), channels, "std"),
    }


def channel_constants(
    preprocessing: dict[str, Any], channels: int, default_scale: float = DEFAULT_SCALE
) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """``(scale, mean, std)`` in float32, mean and std of length ``channels`` (:func:`per_channel`'s rule)."""
    plain = per_channel(preprocessing, channels, default_scale)
    return np.float32(plain["scale"]), np.asarray(plain["mean"], np.float32), np.asarray(plain["std"], np.float32)


def adapt_to_channels(preprocessing: dict[str, Any], channels: int) -> dict[str, Any]:
    """A preset's constants for a model rebuilt with ``channels`` channels (not a broadcast).

    Kept when they already fit; one value is repeated; per-channel values for another channel count
    (an RGB preset made grayscale) are averaged into one value, repeated.
    """
    out = dict(preprocessing)
    for key in ("mean", "std"):
        values = list(out.get(key, [0.0 if key == "mean" else 1.0]))
        if len(values) != channels:
            if len(values) == 1:
                values = values * channels
            else:
                values = [sum(values) / len(values)] * channels
        out[key] = values
    return out


def normalize(x, scale, mean, std):
    """``(x * scale - mean) / std`` with Python operators: numpy arrays, TensorFlow or Keras tensors alike.

    ``x`` must already be float32; ``scale``, ``mean``, ``std`` come from :func:`channel_constants`.
    """
    return (x * scale - mean) / std


def preprocess(images: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """Raw 0..255 images ``(..., C)`` -> float32 model input ``(raw * scale - mean) / std``."""
    images = np.asarray(images)
    scale, mean, std = channel_constants(preprocessing, images.shape[-1])
    return normalize(images.astype(np.float32), scale, mean, std).astype(np.float32)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """``(N, H, W, C)`` -> ``channels`` channels: gray -> colour by repeating, colour -> gray by luma.

    Alpha is dropped. uint8 stays uint8 (luma rounded); float images stay float.
    """
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 4:  # RGBA: drop alpha first
        images, have = images[..., :3], 3
        if channels == 3:
            return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = images.astype(np.float32) @ np.array(LUMA_WEIGHTS, np.float32)
        if images.dtype == np.uint8:
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
        return luma[..., None]
    raise UserInputError(f"Cannot convert {have}-channel images for a {channels}-channel model.")


def resize_images(images: np.ndarray, size: tuple[int, int], chunk: int = 2048) -> np.ndarray:
    """``(N, H, W, C)`` -> ``(N, size[0], size[1], C)``, bilinear (antialiased when shrinking).

    uint8 in, uint8 out (rounded); float in, float32 out.
    """
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    is_uint8 = images.dtype == np.uint8
    out = []
    for start in range(0, len(images), chunk):
        batch = keras.ops.convert_to_tensor(images[start:start + chunk].astype(np.float32))
        resized = keras.ops.convert_to_numpy(
            keras.ops.image.resize(batch, size, interpolation="bilinear", antialias=True)
        )
        out.append(np.clip(np.rint(resized), 0, 255).astype(np.uint8) if is_uint8 else resized.astype(np.float32))
    return np.concatenate(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64 (stable: the max is subtracted first)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _data_layer_base():
    """Keras' base for layers that run in ``tf.data`` on any backend (private, so looked up with a fallback)."""
    try:
        from keras.src.layers.preprocessing.data_layer import DataLayer

        return DataLayer
    except ImportError:  # older Keras 3
        try:
            from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer

            return TFDataLayer
        except ImportError:
            return keras.layers.Layer


@keras.saving.register_keras_serializable(package="keras_vit")
class ImagePreprocessor(_data_layer_base()):
    """Raw pixels ``(B, H, W, C)`` -> the model's input: resize (if ``image_size``), then normalize.

    Holds ``image_size``, ``scale``, ``mean``, ``std`` (one value or one per channel) and is
    serializable. Usable inside a model and as a ``tf.data`` map function on every backend::

        converter = ImagePreprocessor.from_preprocessing(model.preprocessing, model.image_size)
        ds = ds.map(lambda x, y: (converter(x), y))
    """

    def __init__(self, image_size=None, scale=DEFAULT_SCALE, mean=(0.0,), std=(1.0,), **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size) if image_size is not None else None
        self.scale = float(scale)
        self.mean = [float(v) for v in np.reshape(mean, -1)]
        self.std = [float(v) for v in np.reshape(std, -1)]

    @classmethod
    def from_preprocessing(cls, preprocessing: dict[str, Any], image_size=None, **kwargs) -> ImagePreprocessor:
        """The layer for a model's ``preprocessing`` dict."""
        return cls(image_size=image_size, scale=preprocessing.get("scale", DEFAULT_SCALE),
                   mean=preprocessing.get("mean", [0.0]), std=preprocessing.get("std", [1.0]), **kwargs)

    def call(self, inputs):
        ops = getattr(self, "backend", keras.ops)
        x = ops.cast(inputs, "float32")
        if self.image_size is not None and tuple(x.shape[-3:-1]) != self.image_size:
            x = ops.image.resize(x, self.image_size, interpolation="bilinear", antialias=True)
        scale, mean, std = channel_constants(
            {"scale": self.scale, "mean": self.mean, "std": self.std}, int(x.shape[-1])
        )
        constants = (ops.convert_to_tensor(np.asarray(c, np.float32)) for c in (scale, mean, std))
        return normalize(x, *constants)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if self.image_size is not None:
            shape[-3:-1] = self.image_size
        return tuple(shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "image_size": self.image_size, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std)}
