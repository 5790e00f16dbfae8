"""Image classification datasets as uint8 NHWC arrays, and the pixel transforms a model expects.

``load_dataset`` understands:

- ``"sample"``: the 5,000/1,000-image MNIST sample shipped inside the package (no network, no files);
- ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``: read from ``DIR/<name>/<name>.npz`` or ``DIR/<name>.npz``
  (``keras.datasets`` layout) where ``DIR`` is ``data_dir`` or ``$KERAS_VIT_DATA``; CIFAR-10 also from the
  JPEG-decoded copy ``DIR/cifar10_jpeg/cifar10_jpeg.npz``; otherwise downloaded by ``keras.datasets``;
- a path to any ``.npz`` with ``x_train, y_train, x_test, y_test`` (and optionally ``class_names``);
- a path to an image folder with one sub-folder per class (or ``train/`` and ``test/`` folders that
  each hold one sub-folder per class).

Every problem a user can fix (missing file, wrong keys, bad labels, mixed image sizes...) raises
:class:`~keras_vit.errors.UserInputError` with one sentence saying what is wrong.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit.errors import UserInputError
from keras_vit.preprocessing import channel_constants, convert_channels, preprocess, resize_images  # noqa: F401 (re-exported)

#: Environment variable naming the folder with the offline dataset files.
DATA_ENV = "KERAS_VIT_DATA"

#: The dataset ``load_dataset`` and ``keras-vit train`` use by default: packaged, offline, small.
SAMPLE = "sample"

DIGITS = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

#: Named datasets and their class names.
NAMED_DATASETS: dict[str, list[str]] = {
    SAMPLE: DIGITS,
    "mnist": DIGITS,
    "fashion_mnist": FASHION_MNIST_CLASSES,
    "cifar10": CIFAR10_CLASSES,
}

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Fraction of each class held out as the test split of an image folder without train/ and test/.
FOLDER_TEST_FRACTION = 0.2
_FOLDER_SPLIT_SEED = 1337


@dataclass
class Dataset:
    """A classification dataset: uint8 images ``(N, H, W, C)`` and int32 labels ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    name: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(s) for s in self.x_train.shape[1:])  # type: ignore[return-value]

    def describe(self) -> str:
        h, w, c = self.image_shape
        return (f"{self.name}: {len(self.y_train):,} train / {len(self.x_test):,} test images, "
                f"{h}x{w}x{c}, {self.num_classes} classes")

    def __repr__(self) -> str:
        return f"Dataset({self.describe()})"


def note(message: str) -> None:
    """Tell the user something worth knowing (on stderr, so that ``--json`` output stays clean)."""
    print(f"keras-vit: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Loading


def load_dataset(name: str = SAMPLE, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name or path (see the module docstring for what ``name`` may be).

    Args:
        name: ``"sample"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, a ``.npz`` path or an
            image-folder path.
        data_dir: folder holding the named datasets' ``.npz`` files; defaults to ``$KERAS_VIT_DATA``.
    """
    name = str(name)
    if name == SAMPLE:
        with resources.files("keras_vit").joinpath("data/mnist_sample.npz").open("rb") as f:
            return _from_arrays(_read_npz(io.BytesIO(f.read()), "the packaged MNIST sample"), SAMPLE, DIGITS)
    if name in NAMED_DATASETS:
        return _load_named(name, data_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file():
        return load_npz(path)
    if path.suffix.lower() == ".npz" or os.sep in name or (os.altsep and os.altsep in name):
        raise UserInputError(f"Dataset file not found: {name}.")
    raise UserInputError(
        f"Unknown dataset {name!r}: use one of {', '.join(NAMED_DATASETS)}, a .npz file with "
        "x_train, y_train, x_test, y_test, or an image folder with one sub-folder per class."
    )


def load_npz(path: str | os.PathLike, name: str | None = None,
             class_names: list[str] | None = None) -> Dataset:
    """Load a ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``class_names``)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Dataset file not found: {path}.")
    arrays = _read_npz(path, str(path))
    return _from_arrays(arrays, name or path.stem, class_names)


def _read_npz(source, label: str) -> dict[str, np.ndarray]:
    try:
        data = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserInputError(f"{label} is not a valid .npz file ({_short(err)}).") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserInputError(f"{label} is not a valid .npz file (it holds a single array, not an archive).")
    with data:
        missing = [k for k in REQUIRED_KEYS if k not in data.files]
        if missing:
            raise UserInputError(
                f"{label} lacks the key(s) {', '.join(missing)}: a dataset .npz needs "
                f"{', '.join(REQUIRED_KEYS)} (found: {', '.join(data.files) or 'nothing'})."
            )
        keys = [*REQUIRED_KEYS, *(["class_names"] if "class_names" in data.files else [])]
        try:
            return {k: data[k] for k in keys}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserInputError(f"{label} is not a valid .npz file ({_short(err)}).") from None


def _load_named(name: str, data_dir) -> Dataset:
    explicit = data_dir is not None
    folder = data_dir if explicit else os.environ.get(DATA_ENV)
    looked: list[Path] = []
    if folder:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            origin = "--data-dir" if explicit else f"${DATA_ENV}"
            raise UserInputError(f"{origin} {folder} is not a folder.")
        looked = [folder / name / f"{name}.npz", folder / f"{name}.npz"]
        if name == "cifar10":
            looked.append(folder / "cifar10_jpeg" / "cifar10_jpeg.npz")
        for path in looked:
            if path.is_file():
                if path.name == "cifar10_jpeg.npz":
                    return _load_cifar10_jpeg(path)
                return load_npz(path, name=name, class_names=NAMED_DATASETS[name])
        if explicit:
            raise UserInputError(
                f"{name} not found in {folder}: looked for {', '.join(str(p) for p in looked)}."
            )
    return _download(name, looked)


def _download(name: str, looked: list[Path]) -> Dataset:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # no network, proxy, hash mismatch...: all mean "use local files"
        where = f" (not found at {', '.join(str(p) for p in looked)})" if looked else ""
        raise UserInputError(
            f"Could not download {name}{where}: {_short(err)}. Pass --data-dir DIR with "
            f"DIR/{name}/{name}.npz, or set {DATA_ENV}."
        ) from None
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return _from_arrays(arrays, name, NAMED_DATASETS[name])


def _load_cifar10_jpeg(path: Path) -> Dataset:
    """The JPEG-decoded CIFAR-10 copy: full test set, 5k train subset, optionally the full 50k train."""
    arrays = _read_npz(path, str(path))
    notes = ["CIFAR-10 from a JPEG (q75) re-encoding: lossy, not comparable with published numbers"]
    full = path.with_name("cifar10_jpeg_train_bytes.npz")
    if full.is_file():
        try:
            from PIL import Image
        except ImportError:
            notes.append("Pillow is not installed: using the 5,000-image training subset")
        else:
            with np.load(full, allow_pickle=False) as z:
                blob, offsets, labels = z["jpeg_bytes"], z["offsets"], z["y_train"]
            subset = _from_arrays(arrays, "cifar10", CIFAR10_CLASSES)  # checks the test split and image size
            labels = _labels(labels, "y_train", full.name)
            if len(labels) != len(offsets) - 1:
                raise UserInputError(f"{full}: {len(offsets) - 1} JPEG images but {len(labels)} labels.")

            def decode() -> np.ndarray:
                note(f"decoding the {len(offsets) - 1:,} CIFAR-10 training images in {full.name}")
                return np.stack([
                    np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                    for i in range(len(offsets) - 1)
                ])

            return _LazyTrainDataset(decode, subset.image_shape, labels, subset.x_test, subset.y_test,
                                     subset.class_names, subset.name, notes)
    else:
        notes.append("using the 5,000-image training subset (cifar10_jpeg_train_bytes.npz not found)")
    dataset = _from_arrays(arrays, "cifar10", CIFAR10_CLASSES)
    dataset.notes.extend(notes)
    return dataset


class _LazyTrainDataset(Dataset):
    """A :class:`Dataset` whose training images are decoded on first use of ``x_train``: scoring the test
    split (``keras-vit evaluate``) never pays for decoding 50,000 training JPEGs."""

    def __init__(self, decode, image_shape: tuple[int, int, int], y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, class_names: list[str], name: str, notes: list[str]):
        self._decode, self._x_train, self._image_shape = decode, None, tuple(image_shape)
        super().__init__(None, y_train, x_test, y_test, class_names, name, notes)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def x_train(self) -> np.ndarray:
        if self._x_train is None:
            self._x_train = self._decode()
        return self._x_train

    @x_train.setter
    def x_train(self, value) -> None:
        if value is not None:
            self._x_train = value

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape  # type: ignore[return-value]


def load_image_folder(path: str | os.PathLike, test_fraction: float = FOLDER_TEST_FRACTION) -> Dataset:
    """Load a folder with one sub-folder of images per class (names sorted = label order).

    If the folder holds exactly ``train/`` and ``test/``, each with the same class sub-folders, those
    are the splits; otherwise ``test_fraction`` of every class (a fixed, seeded choice) becomes the
    test split. Grayscale-only folders give 1 channel, anything else RGB.
    """
    root = Path(path)
    subdirs = _subdirs(root)
    if {d.name for d in subdirs} == {"train", "test"}:
        train_files, classes = _class_files(root / "train")
        test_files, test_classes = _class_files(root / "test")
        if test_classes != classes:
            raise UserInputError(
                f"{root}/train and {root}/test have different class folders: {classes} vs {test_classes}."
            )
    else:
        all_files, classes = _class_files(root)
        rng = np.random.default_rng(_FOLDER_SPLIT_SEED)
        train_files, test_files = [], []
        for label in range(len(classes)):
            files = [f for f in all_files if f[1] == label]
            order = rng.permutation(len(files))
            n_test = int(round(len(files) * test_fraction)) if len(files) > 1 else 0
            test_files += [files[i] for i in sorted(order[:n_test])]
            train_files += [files[i] for i in sorted(order[n_test:])]
    x_train, x_test = _read_images([f for f, _ in train_files] + [f for f, _ in test_files], root,
                                   len(train_files))
    arrays = dict(x_train=x_train, y_train=np.array([y for _, y in train_files], np.int64),
                  x_test=x_test, y_test=np.array([y for _, y in test_files], np.int64))
    return _from_arrays(arrays, root.name, classes)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_files(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = _subdirs(folder) if folder.is_dir() else []
    if not classes:
        raise UserInputError(
            f"{folder} has no class sub-folders: an image folder needs one sub-folder of images per class."
        )
    files = []
    for label, class_dir in enumerate(classes):
        images = sorted(p for p in class_dir.rglob("*")
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise UserInputError(
                f"Class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "remove it or add images."
            )
        files += [(p, label) for p in images]
    return files, [d.name for d in classes]


def _read_images(files: list[Path], root: Path, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from PIL import Image
    except ImportError:
        raise UserInputError("Reading an image folder needs Pillow: pip install pillow.") from None
    sizes, modes = {}, set()
    for f in files:
        try:
            with Image.open(f) as im:
                size, mode = im.size, im.mode
        except Exception as err:
            raise UserInputError(f"Cannot read image {f}: {_short(err)}.") from None
        modes.add(mode)
        sizes.setdefault(size, f)
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = sizes.items()
            raise UserInputError(
                f"Images in {root} have different sizes: {f1.relative_to(root)} is {s1[0]}x{s1[1]}, "
                f"{f2.relative_to(root)} is {s2[0]}x{s2[1]}; resize them to one size first."
            )
    gray = modes <= {"L", "1", "LA", "I", "I;16"}
    mode = "L" if gray else "RGB"
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(np.asarray(im.convert(mode), np.uint8))
    x = np.stack(images)
    if gray:
        x = x[..., None]
    return x[:n_train], x[n_train:]


# --------------------------------------------------------------------------------------------------
# Validation


def _from_arrays(arrays: dict[str, Any], name: str, class_names: list[str] | None) -> Dataset:
    """Check and normalise raw arrays into a :class:`Dataset` (uint8 NHWC images, int32 labels)."""
    x_train, x_test = (_images(arrays[k], k, name) for k in ("x_train", "x_test"))
    y_train, y_test = (_labels(arrays[k], k, name) for k in ("y_train", "y_test"))
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise UserInputError(
                f"{name}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; they must match."
            )
        if len(x) == 0:
            raise UserInputError(
                f"{name}: the {split} split is empty; a dataset needs train and test images."
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserInputError(
            f"{name}: train images are {_shape(x_train)} but test images are {_shape(x_test)}; "
            "they must have one size."
        )
    if class_names is None and "class_names" in arrays:
        class_names = [str(c) for c in np.asarray(arrays["class_names"]).reshape(-1)]
    top = int(max(y_train.max(), y_test.max()))
    if class_names is None:
        class_names = [str(i) for i in range(top + 1)]
    if top >= len(class_names):
        raise UserInputError(
            f"{name}: label {top} is out of range for {len(class_names)} classes (labels must be "
            f"0..{len(class_names) - 1})."
        )
    return Dataset(x_train, y_train, x_test, y_test, list(class_names), name)


def _images(x, key: str, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise UserInputError(
            f"{name}: {key} has shape {x.shape}; expected (N, H, W) or (N, H, W, C) images "
            "with 1, 3 or 4 channels."
        )
    if x.dtype != np.uint8:
        if x.size and (not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x)
                       or x.min() < 0 or x.max() > 255 or not np.all(np.mod(x, 1) == 0)):
            raise UserInputError(
                f"{name}: {key} must hold 0..255 pixel values (uint8), got {x.dtype}; "
                "scale float images to 0..255 and store them as uint8."
            )
        x = x.astype(np.uint8)
    return x


def _labels(y, key: str, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserInputError(
            f"{name}: {key} has shape {y.shape}; labels must be one integer per image, shape (N,) or (N, 1)."
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise UserInputError(f"{name}: {key} must hold integer class labels, got {y.dtype}.")
    if y.size and y.min() < 0:
        raise UserInputError(f"{name}: {key} has negative labels ({int(y.min())}); labels must be 0..K-1.")
    return y.astype(np.int32)


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Raise if the dataset's labels do not fit a model with ``num_classes`` outputs."""
    top = int(max(dataset.y_train.max(), dataset.y_test.max()))
    if top >= num_classes:
        raise UserInputError(
            f"{dataset.name} has labels up to {top} but the model has {num_classes} classes; "
            "use a model built for this dataset."
        )


# --------------------------------------------------------------------------------------------------
# Pixels: what the model sees


def preprocessing_constants(
    preprocessing: dict[str, Any], channels: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(scale, mean, std)``, mean/std float32 arrays of length ``channels`` (:mod:`keras_vit.preprocessing`)."""
    return channel_constants(preprocessing, channels)


def match_model(dataset: Dataset, image_size: tuple[int, int], channels: int) -> Dataset:
    """The dataset with images resized / channel-converted to what a model expects (a note says so)."""
    h, w, c = dataset.image_shape
    if (h, w) == tuple(image_size) and c == channels:
        return dataset
    note(f"{dataset.name} images are {h}x{w}x{c}; converting them to the model's "
         f"{image_size[0]}x{image_size[1]}x{channels} (bilinear resize, channels "
         f"{'repeated' if channels > c else 'mixed' if channels < c else 'kept'})")
    x_train, x_test = (resize_images(convert_channels(x, channels), tuple(image_size))
                       for x in (dataset.x_train, dataset.x_test))
    return Dataset(x_train, dataset.y_train, x_test, dataset.y_test, list(dataset.class_names),
                   dataset.name, list(dataset.notes))


def _shape(x: np.ndarray) -> str:
    return "x".join(str(s) for s in x.shape[1:])


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]
