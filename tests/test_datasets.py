"""Datasets: every source load_dataset understands, every bad-data error, and the pixel transforms."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from keras_vit.datasets import (
    CIFAR10_CLASSES,
    DATA_ENV,
    FASHION_MNIST_CLASSES,
    Dataset,
    check_labels,
    convert_channels,
    load_dataset,
    match_model,
    preprocess,
    resize_images,
)
from keras_vit.errors import UserInputError


def _arrays(n_train=12, n_test=4, shape=(8, 8), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=np.arange(n_train) % classes,
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=np.arange(n_test) % classes,
    )


def _npz(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _error(name, data_dir=None) -> str:
    with pytest.raises(UserInputError) as info:
        load_dataset(str(name), data_dir)
    return str(info.value)


# ------------------------------------------------------------------------------------------------
# Sources


def test_packaged_sample_is_the_offline_default():
    ds = load_dataset()
    assert ds.name == "sample"
    assert ds.x_train.shape == (5000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.class_names == [str(i) for i in range(10)]
    assert np.bincount(ds.y_train).tolist() == [500] * 10
    assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10


@pytest.mark.parametrize("layout", ["fashion_mnist/fashion_mnist.npz", "fashion_mnist.npz"])
def test_named_dataset_from_data_dir(tmp_path, layout):
    arrays = _arrays(shape=(28, 28), classes=10, n_train=20)
    _npz(tmp_path / layout, **arrays)
    ds = load_dataset("fashion_mnist", tmp_path)
    assert ds.name == "fashion_mnist" and ds.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_named_dataset_from_environment(tmp_path, monkeypatch):
    _npz(tmp_path / "mnist" / "mnist.npz", **_arrays(classes=10, n_train=20))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert len(load_dataset("mnist").x_train) == 20


def test_cifar10_jpeg_layout(tmp_path):
    """The shared copy: labels (N, 1), rows sorted by class, and a JPEG-bytes file for the full train set."""
    from PIL import Image

    arrays = _arrays(shape=(32, 32, 3), classes=10, n_train=20, n_test=10)
    arrays["y_train"] = np.sort(arrays["y_train"]).reshape(-1, 1).astype(np.uint8)
    arrays["y_test"] = arrays["y_test"].reshape(-1, 1).astype(np.uint8)
    folder = tmp_path / "cifar10_jpeg"
    _npz(folder / "cifar10_jpeg.npz", **arrays)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.class_names == CIFAR10_CLASSES and ds.y_train.shape == (20,)
    assert ds.x_train.shape == (20, 32, 32, 3) and any("lossy" in n for n in ds.notes)

    blobs = []
    for image in arrays["x_train"][:3]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=75)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(folder / "cifar10_jpeg_train_bytes.npz", jpeg_bytes=np.concatenate(blobs), offsets=offsets,
             y_train=np.array([[1], [2], [3]], np.uint8))
    full = load_dataset("cifar10", tmp_path)
    assert full._x_train is None  # decoded when first needed: scoring the test split never decodes them
    assert full.image_shape == (32, 32, 3) and full.describe().startswith("cifar10: 3 train / 10 test images")
    assert full.x_train.shape == (3, 32, 32, 3) and full.y_train.tolist() == [1, 2, 3]
    assert full.x_train is full.x_train  # decoded once
    for image, blob in zip(full.x_train, blobs, strict=True):
        np.testing.assert_array_equal(image, np.asarray(Image.open(io.BytesIO(blob.tobytes())).convert("RGB")))


@pytest.mark.real_data
def test_real_mnist(real_data_dir):
    ds = load_dataset("mnist", real_data_dir)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9


def test_download_failure_says_to_pass_data_dir(monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/mnist.npz")

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    message = _error("mnist")
    assert message.startswith("Could not download mnist: URL fetch failure")
    assert "Pass --data-dir DIR with DIR/mnist/mnist.npz, or set KERAS_VIT_DATA." in message


def test_any_npz_with_optional_class_names(tmp_path):
    path = _npz(tmp_path / "mine.npz", class_names=np.array(["cat", "dog", "owl"]), **_arrays())
    ds = load_dataset(str(path))
    assert ds.name == "mine" and ds.class_names == ["cat", "dog", "owl"]
    assert ds.x_train.shape == (12, 8, 8, 1)


def test_float_labels_and_integer_images_are_normalised(tmp_path):
    arrays = _arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.int64)
    arrays["y_train"] = arrays["y_train"].astype(np.float32).reshape(-1, 1)
    ds = load_dataset(str(_npz(tmp_path / "a.npz", **arrays)))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.y_train.shape == (12,)


def _image_folder(root, sizes, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for class_name, files in sizes.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(files):
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / class_name / f"{i:02d}.png")
    return root


def test_image_folder_split_is_stratified_and_deterministic(tmp_path):
    root = _image_folder(tmp_path / "shapes", {"circle": [(6, 5)] * 5, "square": [(6, 5)] * 10})
    ds = load_dataset(str(root))
    assert ds.name == "shapes" and ds.class_names == ["circle", "square"]
    assert ds.x_train.shape == (12, 5, 6, 1) and ds.x_test.shape == (3, 5, 6, 1)
    assert np.bincount(ds.y_test).tolist() == [1, 2]  # 20 % of each class
    again = load_dataset(str(root))
    np.testing.assert_array_equal(ds.x_test, again.x_test)


def test_image_folder_with_train_and_test_folders_rgb(tmp_path):
    root = tmp_path / "pets"
    _image_folder(root / "train", {"cat": [(4, 4)] * 3, "dog": [(4, 4)] * 2}, mode="RGB")
    _image_folder(root / "test", {"cat": [(4, 4)], "dog": [(4, 4)]}, mode="RGB")
    ds = load_dataset(str(root))
    assert ds.x_train.shape == (5, 4, 4, 3) and ds.x_test.shape == (2, 4, 4, 3)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------
# One clear error for each kind of bad data


def test_error_unknown_name():
    assert _error("imagenet21k").startswith("Unknown dataset 'imagenet21k': use one of sample, mnist,")


def test_error_missing_file(tmp_path):
    assert _error(tmp_path / "nope.npz") == f"Dataset file not found: {tmp_path / 'nope.npz'}."


def test_error_named_dataset_not_in_data_dir(tmp_path):
    message = _error("mnist", tmp_path)
    assert message.startswith(f"mnist not found in {tmp_path}: looked for {tmp_path / 'mnist' / 'mnist.npz'}")


def test_error_data_dir_not_a_folder(tmp_path):
    assert _error("mnist", tmp_path / "missing") == f"--data-dir {tmp_path / 'missing'} is not a folder."


@pytest.mark.parametrize("content", [b"hello, not a zip", b"PK\x03\x04truncated"])
def test_error_not_an_npz(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    assert _error(path).startswith(f"{path} is not a valid .npz file (")


def test_error_npy_instead_of_npz(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3))
    assert _error(path) == f"{path} is not a valid .npz file (it holds a single array, not an archive)."


def test_error_pickled_arrays_are_refused(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = np.array([object()] * 12, dtype=object)
    path = _npz(tmp_path / "pickled.npz", **arrays)
    assert "is not a valid .npz file (Object arrays cannot be loaded when allow_pickle=False" in _error(path)


def test_error_corrupt_member(tmp_path):
    path = _npz(tmp_path / "c.npz", **_arrays())
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data[:20] if n == "x_test.npy" else data)
    assert _error(path).startswith(f"{path} is not a valid .npz file (")


def test_error_missing_keys(tmp_path):
    arrays = _arrays()
    del arrays["y_test"]
    path = _npz(tmp_path / "k.npz", **arrays)
    assert _error(path) == (f"{path} lacks the key(s) y_test: a dataset .npz needs x_train, y_train, x_test, "
                            "y_test (found: x_train, y_train, x_test).")


def test_error_length_mismatch(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    assert _error(_npz(tmp_path / "m.npz", **arrays)) == (
        "m: x_train has 12 images but y_train has 11 labels; they must match.")


def test_error_negative_labels(tmp_path):
    arrays = _arrays()
    arrays["y_test"] = np.array([0, 1, -1, 2])
    assert _error(_npz(tmp_path / "n.npz", **arrays)) == (
        "n: y_test has negative labels (-1); labels must be 0..K-1.")


def test_error_labels_out_of_range(tmp_path):
    arrays = _arrays(classes=5)
    path = _npz(tmp_path / "r.npz", class_names=np.array(["a", "b", "c"]), **arrays)
    assert _error(path) == "r: label 4 is out of range for 3 classes (labels must be 0..2)."
    with pytest.raises(UserInputError, match="^mnist has labels up to 9 but the model has 5 classes; "):
        check_labels(Dataset(*_arrays(classes=10).values(), [str(i) for i in range(10)], "mnist"), 5)


def test_error_empty_split(tmp_path):
    arrays = _arrays(n_test=0)
    assert _error(_npz(tmp_path / "e.npz", **arrays)) == (
        "e: the test split is empty; a dataset needs train and test images.")


def test_error_float_images(tmp_path):
    arrays = _arrays()
    arrays["x_train"] = arrays["x_train"] / 255.0
    assert _error(_npz(tmp_path / "f.npz", **arrays)).startswith(
        "f: x_train must hold 0..255 pixel values (uint8), got float64;")


def test_error_one_hot_labels(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = np.eye(3)[arrays["y_train"]]
    assert _error(_npz(tmp_path / "o.npz", **arrays)) == (
        "o: y_train has shape (12, 3); labels must be one integer per image, shape (N,) or (N, 1).")


def test_error_train_and_test_sizes_differ(tmp_path):
    arrays = _arrays()
    arrays["x_test"] = np.zeros((4, 9, 9), np.uint8)
    assert _error(_npz(tmp_path / "s.npz", **arrays)) == (
        "s: train images are 8x8x1 but test images are 9x9x1; they must have one size.")


def test_error_mixed_image_sizes_in_folder(tmp_path):
    root = _image_folder(tmp_path / "mixed", {"a": [(8, 8), (8, 8)], "b": [(8, 8), (9, 7)]})
    assert _error(root) == (f"Images in {root} have different sizes: a/00.png is 8x8, b/01.png is 9x7; "
                            "resize them to one size first.")


def test_error_folder_without_classes(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    assert _error(tmp_path / "flat") == (f"{tmp_path / 'flat'} has no class sub-folders: an image folder "
                                         "needs one sub-folder of images per class.")


def test_error_empty_class_folder(tmp_path):
    root = _image_folder(tmp_path / "ds", {"a": [(4, 4)] * 2})
    (root / "b").mkdir()
    assert _error(root).startswith(f"Class folder {root / 'b'} has no images (.png, .jpg")


def test_error_unreadable_image(tmp_path):
    root = _image_folder(tmp_path / "ds", {"a": [(4, 4)] * 2})
    (root / "a" / "broken.png").write_bytes(b"not a png")
    assert _error(root).startswith(f"Cannot read image {root / 'a' / 'broken.png'}: ")


# ------------------------------------------------------------------------------------------------
# Pixels


def test_preprocess_matches_the_formula():
    images = np.array([[[[0, 255, 51]]]], np.uint8)  # one 1x1 RGB pixel
    pre = {"scale": 1 / 255, "mean": [0.5, 0.4, 0.2], "std": [0.5, 0.25, 0.1]}
    out = preprocess(images, pre)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [(0 - 0.5) / 0.5, (1 - 0.4) / 0.25, (0.2 - 0.2) / 0.1], atol=1e-6)
    gray = preprocess(np.full((1, 2, 2, 1), 255, np.uint8), {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]})
    np.testing.assert_allclose(gray, (1 - 0.1307) / 0.3081, rtol=1e-6)
    with pytest.raises(UserInputError, match="^The model's preprocessing has 3 mean values for 1-channel"):
        preprocess(np.zeros((1, 2, 2, 1), np.uint8), pre)


def test_channel_conversion():
    gray = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    rgb = convert_channels(gray, 3)
    assert rgb.shape == (1, 2, 2, 3) and (rgb == gray).all()
    pixel = np.array([[[[200, 100, 50]]]], np.uint8)
    assert convert_channels(pixel, 1)[0, 0, 0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    rgba = np.zeros((1, 1, 1, 4), np.uint8)
    assert convert_channels(rgba, 3).shape == (1, 1, 1, 3)


def test_resize_keeps_constant_images_constant():
    images = np.full((3, 28, 28, 1), 77, np.uint8)
    out = resize_images(images, (32, 32))
    assert out.shape == (3, 32, 32, 1) and out.dtype == np.uint8 and (out == 77).all()
    assert resize_images(images, (28, 28)) is images


def test_match_model_converts_mnist_for_an_rgb_model(capsys):
    ds = Dataset(*_arrays(shape=(28, 28, 1), classes=10).values(), [str(i) for i in range(10)], "mnist")
    out = match_model(ds, (32, 32), 3)
    assert out.x_train.shape == (12, 32, 32, 3) and out.x_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(out.y_train, ds.y_train)
    assert "mnist images are 28x28x1; converting them to the model's 32x32x3" in capsys.readouterr().err
    assert match_model(ds, (28, 28), 1) is ds
