"""`keras-vit train --init`: fine-tuning starts from a timm checkpoint or a `.keras` model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.cli.main import build_parser, main
from keras_vit.cli.train import _build_model
from keras_vit.datasets import load_dataset


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    from keras_vit.testing.timm_reference import make_timm_vit, save_state_dict

    model = make_timm_vit(img_size=14, patch_size=7, embed_dim=192, depth=1, num_heads=3, num_classes=5, in_chans=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_state_dict(model, path)
    return path, {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _args(**kw):
    """``keras-vit train``'s parsed defaults with ``kw`` set, so new options need no change here."""
    args = build_parser().parse_args(["train"])
    vars(args).update(kw)
    return args


def test_init_from_timm_checkpoint_replaces_head_and_resizes_grid(timm_checkpoint):
    path, state = timm_checkpoint
    dataset = load_dataset("sample")
    model = _build_model(_args(init=str(path), image_size=28), dataset)
    assert model.image_size == (28, 28) and model.num_classes == 10
    assert model.class_names == list(dataset.class_names)
    qkv = keras.ops.convert_to_numpy(model.get_layer("block_0").attn.qkv.kernel)
    np.testing.assert_allclose(qkv, state["blocks.0.attn.qkv.weight"].T, atol=1e-7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("head").kernel), 0.0)
    pos = keras.ops.convert_to_numpy(model.get_layer("patch_encoder").position_embedding)
    assert pos.shape == (1, 17, 192)  # 2x2 grid resized to 4x4, class row kept
    np.testing.assert_allclose(pos[0, 0], state["pos_embed"][0, 0], atol=1e-7)


def test_train_init_end_to_end_writes_a_model(timm_checkpoint, tmp_path):
    path, _ = timm_checkpoint
    out = tmp_path / "run"
    code = main(["train", "--init", str(path), "--image-size", "28", "--dataset", "sample", "--epochs", "1",
                 "--output", str(out), "--quiet", "--no-checkpoints"])
    assert code == 0
    model = keras.saving.load_model(out / "model.keras")
    assert isinstance(model, keras_vit.VisionTransformer) and model.num_classes == 10
    assert model.hidden_dim == 192 and model.depth == 1


def test_train_init_missing_file_is_a_user_error(tmp_path, capsys):
    code = main(["train", "--init", str(tmp_path / "nope.safetensors"), "--dataset", "sample", "--epochs", "1",
                 "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_train_init_with_preset_is_refused_in_one_line(timm_checkpoint, tmp_path, capsys):
    path, _ = timm_checkpoint
    code = main(["train", "--init", str(path), "--preset", "vit_cifar_p4", "--dataset", "sample", "--epochs", "1",
                 "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--init and --preset exclude each other" in err and "vit_cifar_p4" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
