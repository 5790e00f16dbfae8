"""Building models from checkpoints: the architecture a file describes, built and loaded, and fine-tuning starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keras_vit.errors import UserInputError
from keras_vit.weights.hub import is_pretrained_name
from keras_vit.weights.loading import load_checkpoint, to_timm_state_dict
from keras_vit.weights.reading import (
    Checkpoint,
    _sidecar_config,
    checkpoint_preprocessing,
    inspect_checkpoint,
    read_checkpoint,
)

#: Attention heads by token width, for timm files (which do not store the head count): the timm and
#: Google ViT family (Ti 192/3, S 384/6, B 768/12, L 1024/16, H 1280/16).
HEADS_BY_WIDTH: dict[int, int] = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
#: Shapes a checkpoint fixes: a model option may not change them.
_ARCHITECTURE_KEYS = ("hidden_dim", "depth", "mlp_dim", "patch_size", "qkv_bias")


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _matching_preset(config: Mapping[str, Any]) -> str | None:
    from keras_vit.presets import PRESETS

    keys = ("patch_size", "channels", "hidden_dim", "depth", "num_heads", "mlp_dim")
    for name, spec in PRESETS.items():
        if spec.get("stem_filters"):
            continue
        if all(spec.get(k) == config[k] for k in keys) and _pair(spec["image_size"]) == config["image_size"]:
            return name
    return None


def convert_checkpoint(
    source: str | os.PathLike | Mapping[str, Any],
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    antialias: bool = True,
    **overrides: Any,
):
    """:func:`from_checkpoint`, also returning the :class:`LoadReport` and the preprocessing's origin."""
    from keras_vit.model import VisionTransformer, check_model_options

    checkpoint = read_checkpoint(source)
    arch = inspect_checkpoint(checkpoint)
    check_model_options(overrides)
    for key in _ARCHITECTURE_KEYS:
        if key in overrides and overrides[key] != getattr(arch, key):
            raise UserInputError(
                f"{checkpoint.source} has {key}={getattr(arch, key)!r}; "
                f"it cannot be changed to {overrides[key]!r}."
            )
    num_heads = overrides.pop("num_heads", None) or arch.num_heads or HEADS_BY_WIDTH.get(arch.hidden_dim)
    if num_heads is None:
        model_args = _sidecar_config(checkpoint).get("model_args", {})
        num_heads = model_args.get("num_heads") if isinstance(model_args, dict) else None
    if num_heads is None:
        raise UserInputError(
            f"{checkpoint.source} does not say how many attention heads it has and its width "
            f"{arch.hidden_dim} is not a standard ViT's: give num_heads (--num-heads)."
        )
    if arch.hidden_dim % int(num_heads):
        raise UserInputError(
            f"num_heads={num_heads} does not divide the checkpoint's width {arch.hidden_dim}."
        )
    if num_classes is None:
        num_classes = arch.num_classes
        if num_classes is None:
            raise UserInputError(f"{checkpoint.source} has no classification head: give num_classes.")
    channels = int(overrides.pop("channels", arch.channels))
    size = _pair(image_size) if image_size is not None else arch.image_size
    if preprocessing is not None:
        merged = dict(preprocessing)
        mean = mean if mean is not None else merged.get("mean")
        std = std if std is not None else merged.get("std")
    prep, origin = checkpoint_preprocessing(checkpoint, channels, mean, std)
    if preprocessing is not None and "scale" in preprocessing:
        prep["scale"] = float(preprocessing["scale"])
    config = dict(
        image_size=size, patch_size=arch.patch_size, channels=channels, num_classes=int(num_classes),
        hidden_dim=arch.hidden_dim, depth=arch.depth, num_heads=int(num_heads), mlp_dim=arch.mlp_dim,
        qkv_bias=arch.qkv_bias, preprocessing=prep,
    )
    preset = _matching_preset(config)
    config.update({k: v for k, v in overrides.items() if k not in _ARCHITECTURE_KEYS})
    config.setdefault("preset", preset)
    if preset and "name" not in config:
        config["name"] = preset
    model = VisionTransformer(**config)
    report = load_checkpoint(model, checkpoint, replace_head=True, adapt_channels=channels != arch.channels,
                             antialias=antialias)
    return model, report, origin


def from_checkpoint(
    path: str | os.PathLike | Mapping[str, Any],
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    **overrides: Any,
):
    """Build the :class:`~keras_vit.model.VisionTransformer` a timm or Google checkpoint describes, loaded.

    Width, depth, MLP width, patch size, channels, image size (from the positional embedding's square
    grid), class count and q/k/v bias come from the checkpoint's shapes. Heads: Google files store
    them; timm files do not, so they come from the width (192: 3, 384: 6, 768: 12, 1024: 16,
    1280: 16), a ``config.json`` beside the file, or ``num_heads=``. When these match a preset, the
    model carries its name.

    Args:
        path: checkpoint file (or folder, or state dict); see :func:`read_checkpoint`.
        num_classes: classes of the new model; another number than the checkpoint's replaces the head
            by a zero one (so does a checkpoint without a head).
        image_size: another input size: the positional embedding is resized bicubically.
        preprocessing: a full ``{"scale", "mean", "std"}`` dict to record instead of the default.
        mean, std: the checkpoint's normalisation; default per :func:`checkpoint_preprocessing`
            (0.5/0.5 for Google and timm's usual ViT weights).
        **overrides: other constructor arguments (``num_heads``, ``channels`` -- a patch embedding is
            adapted to it --, ``dropout``, ``drop_path``, ``class_names``, ``name``...).
    """
    model, _, _ = convert_checkpoint(path, num_classes, image_size, preprocessing, mean, std, **overrides)
    return model


def load_initial_model(
    path: str | os.PathLike,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    **overrides: Any,
):
    """The starting point of a fine-tuning run: a checkpoint, a Hub name or a saved ``.keras`` model, adapted.

    A ``.keras`` file is loaded (safe mode); if ``num_classes``, ``image_size``, ``channels`` or any
    override differs, a model with the new configuration is built and the weights are carried over
    as from a checkpoint: new zero head, resized positional embedding, adapted patch embedding.
    A pretrained name (``hf-hub:timm/ARCH.TAG``, ``ARCH.TAG``) is loaded with
    :func:`~keras_vit.weights.hub.load_pretrained`. Anything else is read with :func:`from_checkpoint`.
    ``None`` keeps what the source has.
    """
    if is_pretrained_name(str(path)):  # a Hub name: hf-hub:timm/ARCH.TAG or ARCH.TAG
        from keras_vit.weights.hub import load_pretrained

        extra = {} if channels is None else {"channels": channels}
        return load_pretrained(str(path), num_classes=num_classes, image_size=image_size, **extra, **overrides)
    file = Path(path)
    if file.suffix.lower() != ".keras":
        extra = {} if channels is None else {"channels": channels}
        return from_checkpoint(file, num_classes=num_classes, image_size=image_size, **extra, **overrides)
    from keras_vit.model import VisionTransformer
    from keras_vit.model_file import load_vit_model
    from keras_vit.preprocessing import adapt_to_channels

    model = load_vit_model(file, needed_by="--init")
    config = model.get_config()
    changes = dict(overrides)
    if num_classes is not None and int(num_classes) != model.num_classes:
        changes["num_classes"] = int(num_classes)
        changes.setdefault("class_names", None)
    if image_size is not None and _pair(image_size) != tuple(model.image_size):
        changes["image_size"] = list(_pair(image_size))
    if channels is not None and int(channels) != model.channels:
        changes["channels"] = int(channels)
        changes.setdefault("preprocessing", adapt_to_channels(model.preprocessing, int(channels)))
    if all(config.get(k) == v for k, v in changes.items()):
        return model
    if "image_size" in changes or "channels" in changes:  # the preset label follows the architecture
        new_config = {**config, **changes}
        new_config["image_size"] = _pair(new_config["image_size"])
        changes.setdefault("preset", _matching_preset(new_config))
    for key in _ARCHITECTURE_KEYS:
        if key in changes and changes[key] != config[key]:
            raise UserInputError(
                f"{file} has {key}={config[key]!r}; it cannot be changed to {changes[key]!r}."
            )
    config.update(changes)
    new = VisionTransformer.from_config(config)
    state = Checkpoint("timm", to_timm_state_dict(model), source=str(file), path=file)
    load_checkpoint(new, state, replace_head=True, adapt_channels=True)
    return new
