"""Pretrained ViTs by name through the Hugging Face Hub cache, with no network.

A tiny timm ViT (random, perturbed weights) is saved by timm itself (``save_for_hf``: ``model.safetensors``
+ ``config.json``) into a private Hub cache laid out as ``huggingface_hub`` keeps it
(``models--timm--NAME/snapshots/COMMIT/...`` + ``refs/main``), under a real pretrained name; the Hub runs
offline (``HF_HUB_OFFLINE``). keras-vit and timm's own ``create_model("hf-hub:...", pretrained=True)``
then read the same cached files.
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from huggingface_hub import constants

import keras_vit
from keras_vit.cli.main import main
from keras_vit.errors import UserInputError
from keras_vit.testing import import_timm, perturb_parameters, random_images, save_to_hub_cache, timm_logits
from keras_vit.weights import PRETRAINED, from_checkpoint, list_pretrained, load_pretrained
from keras_vit.weights.hub import imagenet_class_names

timm = import_timm()

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a real name; its cached files hold a tiny ViT
LABELLED = "tiny_labelled.test"  # a repository whose config.json names its 4 classes
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
TOL = 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_home") / "hub"
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()
    perturb_parameters(ref, seed=3)
    save_to_hub_cache(ref, root, f"timm/{NAME}", COMMIT)
    labelled = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY, num_classes=4).eval()
    perturb_parameters(labelled, seed=4)
    save_to_hub_cache(labelled, root, f"timm/{LABELLED}", COMMIT,
                      model_config={"label_names": ["n1", "n2", "n3", "n4"],
                                    "label_descriptions": {"n1": "cat", "n2": "dog", "n3": "owl"}})
    return root


@pytest.fixture(autouse=True)
def offline_hub(cache, monkeypatch):
    """Point the Hub at the private cache and forbid the network (as HF_HOME / HF_HUB_OFFLINE=1 would)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def logits(model, images) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(images, training=False))


@pytest.mark.backends
@pytest.mark.parametrize("name", [NAME, f"hf-hub:timm/{NAME}"])
def test_pretrained_logits_match_timm_loading_the_same_cache(name):
    model = keras_vit.create_model(name, pretrained=True)
    reference = timm.create_model(f"hf-hub:timm/{NAME}", pretrained=True).eval()
    images = random_images(3, 32, seed=5)
    np.testing.assert_allclose(logits(model, images), timm_logits(reference, images), atol=TOL, rtol=0)
    assert model.image_size == (32, 32) and model.num_classes == 1000
    assert model.preprocessing == {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert model.class_names == imagenet_class_names()  # an ImageNet-1k head without names in its config
    assert model.class_names[:2] == ["tench", "goldfish"]


def test_cached_files_touch_no_network(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked although the files are cached")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    assert keras_vit.create_model(NAME, pretrained=True).num_classes == 1000


def test_config_labels_and_normalisation_come_from_config_json():
    model = keras_vit.create_model(f"hf-hub:timm/{LABELLED}", pretrained=True)
    assert model.class_names == ["cat", "dog", "owl", "n4"]  # descriptions where given, else the label names
    assert model.num_classes == 4


def test_new_head_and_resized_grid_as_from_checkpoint(cache):
    model = keras_vit.create_model(NAME, pretrained=True, num_classes=5, image_size=48)
    same = from_checkpoint(cache / f"models--timm--{NAME}" / "snapshots" / COMMIT / "model.safetensors",
                           num_classes=5, image_size=48)
    assert model.num_classes == 5 and model.image_size == (48, 48) and model.class_names is None
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("head").kernel), 0.0)
    for a, b in zip(model.weights, same.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # the architecture alone takes its default (first listed) tag; a revision is passed to the Hub
    assert load_pretrained("vit_tiny_patch16_224").num_classes == 1000
    assert load_pretrained(f"hf-hub:timm/{NAME}@{COMMIT}").num_classes == 1000
    with pytest.raises(UserInputError, match=f"Could not get timm/{NAME}/model.safetensors: it is not in the"):
        load_pretrained(f"hf-hub:timm/{NAME}@v9")


def test_list_pretrained_names_timm_knows_with_their_resolution_and_classes():
    known = set(timm.list_pretrained())
    assert list_pretrained() == list(PRETRAINED) and len(PRETRAINED) >= 15
    assert list_pretrained("deit") == [n for n in PRETRAINED if "deit" in n]
    for name, info in PRETRAINED.items():
        assert name in known, name
        cfg = timm.models.get_pretrained_cfg(name)
        assert (cfg.input_size[1], cfg.num_classes) == (info.resolution, info.num_classes), name
        assert cfg.hf_hub_id == f"timm/{name}", name


def test_unknown_name_is_an_error_naming_close_matches():
    expected = r"Unknown pretrained model '{0}k'\. Did you mean {0}".format(NAME.replace(".", r"\."))
    with pytest.raises(UserInputError, match=expected):
        keras_vit.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1kk", pretrained=True)
    with pytest.raises(UserInputError, match="expected hf-hub:ORG/NAME"):
        load_pretrained("hf-hub:vit_tiny")


def test_not_cached_and_offline_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "model.keras"
    code = main(["convert", "vit_small_patch16_224.augreg_in1k", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "timm/vit_small_patch16_224.augreg_in1k/model.safetensors" in err
    assert "not in the Hugging Face cache" in err and "keras-vit convert FILE" in err
    code = main(["train", "--init", "hf-hub:timm/vit_small_patch16_224.augreg_in1k", "--dataset", "sample",
                 "--epochs", "1", "--output", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run" / "model.keras").exists()
    assert "keras-vit convert FILE" in capsys.readouterr().err


def test_truncated_file_is_named_not_loaded(cache, tmp_path, monkeypatch):
    broken = tmp_path / "hub"
    shutil.copytree(cache / f"models--timm--{NAME}", broken / f"models--timm--{NAME}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(broken))
    weights = broken / f"models--timm--{NAME}" / "snapshots" / COMMIT / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserInputError, match=f"Could not read {weights}.* as a safetensors file"):
        keras_vit.create_model(NAME, pretrained=True)
    weights.write_text("<html>not a checkpoint</html>")
    with pytest.raises(UserInputError, match="model.safetensors"):
        keras_vit.create_model(NAME, pretrained=True)


def test_convert_cli_and_train_init_take_hub_names(tmp_path, capsys):
    out = tmp_path / "model.keras"
    assert main(["convert", f"hf-hub:timm/{NAME}", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preprocessing: mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5] (config.json)" in printed
    saved = keras.saving.load_model(out)
    assert saved.class_names[0] == "tench" and saved.num_classes == 1000

    from keras_vit.cli.main import build_parser
    from keras_vit.cli.train import _build_model
    from keras_vit.datasets import load_dataset

    dataset = load_dataset("sample")
    args = build_parser().parse_args(["train", "--init", f"hf-hub:timm/{NAME}"])
    model = _build_model(args, dataset)
    assert model.num_classes == dataset.num_classes and model.class_names == list(dataset.class_names)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("block_0").attn.qkv.kernel),
                                  keras.ops.convert_to_numpy(saved.get_layer("block_0").attn.qkv.kernel))


def test_presets_cli_lists_pretrained(capsys):
    assert main(["presets", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PRETRAINED)
    base = next(r for r in rows if r["name"] == "vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert (base["resolution"], base["num_classes"]) == (224, 1000)
    assert base["hub"] == "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"


@pytest.mark.slow
def test_labels_and_preprocessing_reach_the_onnx_metadata(tmp_path):
    from keras_vit.export import read_metadata, to_onnx

    model = keras_vit.create_model(NAME, pretrained=True)
    path = tmp_path / "model.onnx"
    to_onnx(model, path)
    meta = read_metadata(path)
    assert meta["class_names"] == imagenet_class_names()
    assert meta["preprocessing"]["mean"] == [0.5] * 3 and meta["preprocessing"]["std"] == [0.5] * 3
    assert meta["image_size"] == [32, 32]
