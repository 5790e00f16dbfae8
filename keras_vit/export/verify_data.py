"""Real images to verify an export on: a named dataset, an ``.npz`` file, or the packaged MNIST sample.

``--verify-data`` takes a name (``mnist``, ``fashion_mnist``, ``cifar10``, ``usps``, ``mnist_sample``),
loaded as :func:`keras_vit.datasets.load_dataset` loads it (``$KERAS_VIT_DATA``, else Keras' dataset
cache or download; ``usps`` only from ``$KERAS_VIT_DATA/usps/usps_holdout.npz``; ``mnist_sample`` is
the 1,000 test digits shipped in ``keras_vit/data``), or a path to an ``.npz``
with images under ``x_test``, ``x`` or ``images`` and optional labels under ``y_test``, ``y`` or
``labels``. Integer images are raw 0..255 pixels and go through the model's preprocessing; float
images are taken as the model's input as they are. Without ``--verify-data`` the packaged MNIST sample
is used, resized and converted to the model's image size and channels when they differ, so that every
export is checked on real-looking images rather than noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit.datasets import DATA_ENV, NAMED_DATASETS, load_dataset
from keras_vit.errors import UserInputError
from keras_vit.preprocessing import convert_channels, preprocess, resize_images

PACKAGED_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mnist_sample.npz"
DATASETS = {
    "mnist": "mnist/mnist.npz",
    "fashion_mnist": "fashion_mnist/fashion_mnist.npz",
    "cifar10": "cifar10_jpeg/cifar10_jpeg.npz",
    "usps": "usps/usps_holdout.npz",
}
_IMAGE_KEYS = ("x_test", "x", "images")
_LABEL_KEYS = ("y_test", "y", "labels")


@dataclass
class VerifyData:
    """Images in the model's ``(N, H, W, C)`` shape.

    ``raw`` holds uint8 pixels (``None`` when the data came as float model inputs), ``inputs`` the
    float32 model inputs, ``labels`` the integer labels if known.
    """

    raw: np.ndarray | None
    inputs: np.ndarray
    labels: np.ndarray | None
    description: str

    def __len__(self) -> int:
        return len(self.inputs)

    def feed(self, include_preprocessing: bool, raw_input_dtype: str = "uint8") -> np.ndarray:
        """What the exported graph takes: raw pixels when preprocessing is inside, else model inputs."""
        if not include_preprocessing:
            return self.inputs
        if self.raw is None:
            raise UserInputError(
                "--include-preprocessing needs raw integer pixels in --verify-data, got float model inputs."
            )
        return self.raw.astype(raw_input_dtype)


def resolve_dataset(name: str) -> Path | str:
    """The ``.npz`` file for a path, or the dataset name to load; :class:`UserInputError` if there is none.

    ``mnist``, ``fashion_mnist`` and ``cifar10`` are returned as names and loaded by
    :func:`keras_vit.datasets.load_dataset` (``$KERAS_VIT_DATA``, else Keras' own dataset cache or
    download); ``usps`` has no Keras loader and is looked up as ``usps/usps_holdout.npz`` under
    ``$KERAS_VIT_DATA``.
    """
    if name == "mnist_sample":
        return PACKAGED_SAMPLE
    candidate = Path(name).expanduser()
    if name.endswith(".npz") or candidate.is_file():
        if not candidate.is_file():
            raise UserInputError(f"verify data file {candidate} does not exist.")
        return candidate
    if name not in DATASETS:
        raise UserInputError(
            f"unknown verify data {name!r}: give an .npz file or one of {', '.join([*DATASETS, 'mnist_sample'])}."
        )
    if name in NAMED_DATASETS:
        return name
    root = os.environ.get(DATA_ENV)
    if root and (Path(root) / DATASETS[name]).is_file():
        return Path(root) / DATASETS[name]
    where = f"${DATA_ENV} is {root}" if root else f"${DATA_ENV} is not set"
    raise UserInputError(
        f"dataset {name!r} not found: it is read from {DATASETS[name]} under ${DATA_ENV} ({where}); "
        "or give the path of an .npz file."
    )


def _read_images(path: Path | str, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``limit`` test images (and labels, if any) of a named dataset or an ``.npz`` file."""
    if isinstance(path, str):  # a named dataset: the library's loader and its error messages
        dataset = load_dataset(path)
        return np.asarray(dataset.x_test[:limit]), np.asarray(dataset.y_test[:limit]).astype("int64")
    try:
        with np.load(path, allow_pickle=False) as data:
            image_key = next((k for k in _IMAGE_KEYS if k in data.files), None)
            if image_key is None:
                raise UserInputError(f"{path} has no images under any of {', '.join(_IMAGE_KEYS)}.")
            images = np.asarray(data[image_key][:limit])
            label_key = next((k for k in _LABEL_KEYS if k in data.files), None)
            labels = np.asarray(data[label_key][:limit]).reshape(-1).astype("int64") if label_key else None
    except UserInputError:
        raise
    except Exception as err:
        raise UserInputError(f"could not read verify data {path}: {err}") from None
    return images, labels


def load_verify_data(
    source: str | os.PathLike | None,
    image_size: tuple[int, int],
    channels: int,
    preprocessing: dict[str, Any],
    limit: int = 1000,
) -> VerifyData:
    """Up to ``limit`` test images from ``source`` (default: the packaged MNIST sample), model-shaped."""
    path = PACKAGED_SAMPLE if source is None else resolve_dataset(str(source))
    images, labels = _read_images(path, limit)
    if len(images) == 0:
        raise UserInputError(f"verify data {path} holds no images.")
    description = f"{len(images)} images from {PACKAGED_SAMPLE.name if source is None else source}"
    is_raw = np.issubdtype(images.dtype, np.integer)
    images = _to_nhwc(images.astype("float32"), path)
    changed = images.shape[1:] != (*image_size, channels)
    images = _match_shape(images, image_size, channels)
    if changed:
        description += f" resized to {image_size[0]}x{image_size[1]}x{channels}"
    if is_raw:
        raw = np.clip(np.rint(images), 0, 255).astype("uint8")
        return VerifyData(raw, preprocess(raw, preprocessing), labels, description)
    return VerifyData(None, images.astype("float32"), labels, description + " (float model inputs)")


def _to_nhwc(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        raise UserInputError(f"verify data {path} has images of shape {images.shape}: expected (N, H, W[, C]).")
    return images


def _match_shape(images: np.ndarray, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """Resize and convert grayscale <-> colour to the model's input shape (:mod:`keras_vit.preprocessing`)."""
    return convert_channels(resize_images(images, tuple(image_size)), channels)
