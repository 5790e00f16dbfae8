"""Reading checkpoints: files (or state dicts) -> named NumPy arrays, their layout, architecture and normalisation.

Files: ``.safetensors`` (``safetensors.numpy``), ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.load`` with
``weights_only=True``), ``.npz`` (``np.load(allow_pickle=False)``), or a Hugging Face / timm hub folder. The
layout (a :class:`~keras_vit.weights.tables.CheckpointFormat`) comes from the keys, not the suffix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit.errors import UserInputError
from keras_vit.weights.tables import FORMATS, GOOGLE, GOOGLE_PREFIXES, HEADS_QKV, LINEAR, TIMM, CheckpointFormat

#: ``mean``/``std`` of Google's checkpoints and timm's default ViT weights (inputs in ``[-1, 1]``).
INCEPTION_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
#: The usual ImageNet constants, used by DeiT, MAE and DINO weights.
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
#: File-name fragments of timm weight families trained on ImageNet-normalised inputs.
IMAGENET_NORMALISED_FAMILIES = ("deit", "mae", "dino")


@dataclass
class Checkpoint:
    """Arrays of a checkpoint and which layout they follow.

    Attributes:
        layout: ``"timm"`` or ``"google"``.
        arrays: name -> NumPy array (keys without the Google ``prefix`` removed).
        prefix: the Google key prefix (``""`` or ``"opt/target/"``).
        source: a description for messages (the path, or ``"state dict"``).
        path: the file, if read from one.
    """

    layout: str
    arrays: Mapping[str, np.ndarray]
    prefix: str = ""
    source: str = "state dict"
    path: Path | None = None


def _to_numpy(value: Any) -> Any:
    """A NumPy array from a NumPy/torch/JAX/TF array (bfloat16 and float16 become float32)."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        array = value
    elif hasattr(value, "__array__") or hasattr(value, "numpy"):
        array = np.asarray(value)
    else:
        return value  # not an array (training metadata in a torch checkpoint): kept, never loaded
    if array.dtype.kind == "f" and array.dtype != np.float64:
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "V" or str(array.dtype) == "bfloat16":
        return array.astype(np.float32)
    return array


def _unwrap_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Like timm: use ``state["model"]``/``state["state_dict"]`` if present, drop a ``module.`` prefix."""
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise UserInputError(
            f"Reading {path.name} needs the safetensors package: pip install 'keras-vision-transformer[weights]'."
        ) from err
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        if "bf16" in str(err).lower() or "bfloat16" in str(err).lower():
            return _read_safetensors_with_torch(path)
        raise UserInputError(f"Could not read {path} as a safetensors file: {err}") from err


def _read_safetensors_with_torch(path: Path) -> dict[str, Any]:
    """bfloat16 tensors have no NumPy type: read them with torch and widen them to float32."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise UserInputError(
            f"{path.name} holds bfloat16 tensors, which need torch to read: pip install torch."
        ) from err
    return load_file(str(path))


def _read_torch(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        raise UserInputError(
            f"Reading {path.name} needs torch (pip install torch), or convert it to .safetensors first."
        ) from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        text = str(err)
        if "WeightsUnpickler error:" in text:  # skip torch's advice to retry with weights_only=False
            text = text.split("WeightsUnpickler error:", 1)[1]
        detail = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
        raise UserInputError(
            f"Could not read {path} as a PyTorch state dict ({detail}). Only plain files of tensors are "
            "read (torch.load with weights_only=True, for safety): re-save other files as a state dict "
            "or as .safetensors."
        ) from err
    if not isinstance(state, Mapping):
        raise UserInputError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise UserInputError(f"{path} is a single .npy array, not an .npz archive of named arrays.")
            return {name: data[name] for name in data.files}
    except UserInputError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile/ValueError/OSError
        raise UserInputError(f"Could not read {path} as an .npz archive: {err}") from err


def _resolve_file(path: Path) -> Path:
    if path.is_dir():  # a Hugging Face / timm hub snapshot
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise UserInputError(f"{path} is a folder without model.safetensors or pytorch_model.bin.")
    if not path.is_file():
        raise UserInputError(f"Checkpoint file not found: {path}")
    return path


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any]) -> Checkpoint:
    """Read a checkpoint file (or take a state dict) and tell its layout.

    Files: ``.safetensors`` (``safetensors.numpy``), ``.pth``/``.pt``/``.bin``/``.ckpt``
    (``torch.load(weights_only=True, map_location="cpu")``), ``.npz`` (``np.load(allow_pickle=False)``),
    or a folder holding ``model.safetensors``/``pytorch_model.bin``. The layout comes from the keys,
    not the suffix.

    Raises:
        UserInputError: the file is missing, unreadable, or not a ViT checkpoint of a known layout.
    """
    if isinstance(source, Mapping):
        raw, name, path = dict(source), "state dict", None
    else:
        path = _resolve_file(Path(source))
        name = str(path)
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            raw = _read_safetensors(path)
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            raw = _read_torch(path)
        elif suffix == ".npz":
            raw = _read_npz(path)
        else:
            raise UserInputError(
                f"Unknown checkpoint type {path.suffix or '(no suffix)'!r} for {path.name}: expected "
                ".safetensors, .pth, .pt, .bin or .ckpt (timm) or .npz (Google)."
            )
    for prefix in GOOGLE_PREFIXES:
        if prefix + GOOGLE.patch_kernel in raw:
            arrays = {k[len(prefix):]: _to_numpy(v) for k, v in raw.items() if k.startswith(prefix)}
            return Checkpoint(GOOGLE.name, arrays, prefix, name, path)
    state = _unwrap_state_dict(raw)
    if TIMM.patch_kernel in state:
        return Checkpoint(TIMM.name, {k: _to_numpy(v) for k, v in state.items()}, "", name, path)
    if any(k.startswith(("params/", "Transformer/encoderblock/")) for k in raw):
        raise UserInputError(
            f"{name} looks like a big_vision checkpoint (params/ prefix or stacked encoder blocks), "
            "which keras-vit does not load; use an original ViT/AugReg .npz or a timm state dict."
        )
    sample = ", ".join(sorted(map(str, raw))[:4]) or "no keys"
    raise UserInputError(
        f"{name} is not a ViT checkpoint keras-vit knows: it has neither timm's 'patch_embed.proj.weight' "
        f"nor Google's 'embedding/kernel' (first keys: {sample})."
    )



@dataclass
class CheckpointArchitecture:
    """Model shape read from a checkpoint. ``num_heads``/``num_classes`` are ``None`` when unknown."""

    hidden_dim: int
    depth: int
    num_heads: int | None
    mlp_dim: int
    patch_size: int
    channels: int
    image_size: tuple[int, int]
    num_classes: int | None
    qkv_bias: bool


def _block_count(arrays: Mapping[str, Any], pattern: str) -> int:
    depth = 0
    while pattern.format(depth) in arrays:
        depth += 1
    return depth


def _square_grid(tokens: int, source: str, key: str) -> int:
    side = math.isqrt(max(tokens - 1, 0))
    if side * side != tokens - 1 or side == 0:
        raise UserInputError(
            f"{source}: {key!r} has {tokens} positions, which is not a class token plus a square patch "
            "grid; keras-vit cannot infer its grid."
        )
    return side


def _require(arrays: Mapping[str, Any], key: str, ndim: int, source: str) -> np.ndarray:
    if key not in arrays:
        raise UserInputError(f"{source}: missing key {key!r}.")
    value = arrays[key]
    if np.ndim(value) != ndim:
        raise UserInputError(
            f"{source}: key {key!r} has shape {tuple(np.shape(value))}, expected {ndim} dimensions."
        )
    return value


def checkpoint_format(checkpoint: Checkpoint) -> CheckpointFormat:
    """The name-map table of ``checkpoint``'s layout."""
    return FORMATS[checkpoint.layout]


def inspect_checkpoint(checkpoint: Checkpoint) -> CheckpointArchitecture:
    """The architecture a checkpoint's shapes describe (heads from the file for Google, else ``None``).

    The image size comes from the positional embedding: a square grid of ``sqrt(T - 1)`` patches.
    """
    a, src, fmt = checkpoint.arrays, checkpoint.source, checkpoint_format(checkpoint)
    kernel = _require(a, fmt.patch_kernel, 4, src).shape
    if fmt.patch_layout == "OIHW":
        dim, channels, ph, pw = kernel
    else:
        ph, pw, channels, dim = kernel
    pos = _require(a, fmt.pos_embed, 3, src)
    depth = _block_count(a, fmt.depth_pattern())
    num_heads = None
    if fmt.stores_heads and depth:
        num_heads = int(_require(a, fmt.block_key(0, "attn.qkv", "query/kernel"), 3, src).shape[1])
    out_axis = 0 if fmt.block_tensors["mlp.fc1"][1] == LINEAR else 1
    fc1 = fmt.block_key(0, "mlp.fc1", fmt.linear_suffixes[0])
    mlp_dim = _require(a, fc1, 2, src).shape[out_axis] if depth else 4 * dim
    head = a.get(fmt.head_kernel)
    num_classes = None
    if head is not None and np.ndim(head) == 2:
        num_classes = int(head.shape[0 if fmt.head_out_in else 1])
    qkv_kind = fmt.block_tensors["attn.qkv"][1]
    qkv_bias = fmt.block_key(0, "attn.qkv", "query/bias" if qkv_kind == HEADS_QKV else fmt.linear_suffixes[1]) in a
    grid = _square_grid(pos.shape[1], src, fmt.pos_embed)
    if ph != pw:
        raise UserInputError(f"{src}: non-square {ph}x{pw} patches are not supported.")
    if depth == 0:
        raise UserInputError(f"{src}: no encoder blocks found.")
    return CheckpointArchitecture(
        hidden_dim=int(dim), depth=depth, num_heads=num_heads, mlp_dim=int(mlp_dim), patch_size=int(ph),
        channels=int(channels), image_size=(grid * int(ph), grid * int(ph)), num_classes=num_classes,
        qkv_bias=bool(qkv_bias),
    )


def _sidecar_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """A timm / Hugging Face ``config.json`` next to the checkpoint file, if there is one."""
    if checkpoint.path is None:
        return {}
    candidate = checkpoint.path.parent / "config.json"
    if not candidate.is_file():
        return {}
    try:
        config = json.loads(candidate.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def checkpoint_preprocessing(
    checkpoint: Checkpoint,
    channels: int,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> tuple[dict[str, Any], str]:
    """The ``preprocessing`` dict a checkpoint expects, and where it came from.

    In order: ``mean``/``std`` given here; for timm files, a timm/Hugging Face ``config.json`` next to
    the file (``pretrained_cfg.mean/std``); Google ``.npz`` files: 0.5/0.5 (all of Google's ViT
    checkpoints take inputs in ``[-1, 1]``); timm file names naming DeiT, MAE or DINO weights: the
    ImageNet constants; anything else: 0.5/0.5, the normalisation of timm's default ViT weights
    (AugReg and the original ImageNet-21k ones). Values are per channel (one value is repeated).
    """
    origin = "argument"
    if mean is None or std is None:
        config = _sidecar_config(checkpoint) if checkpoint.layout == "timm" else {}
        cfg = config.get("pretrained_cfg", config)
        name = checkpoint.path.name.lower() if checkpoint.path else ""
        folder = checkpoint.path.parent.name.lower() if checkpoint.path else ""
        if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
            default, origin = (list(cfg["mean"]), list(cfg["std"])), "config.json"
        elif checkpoint.layout == "google":
            default, origin = INCEPTION_MEAN_STD, "Google checkpoint (inputs in [-1, 1])"
        elif any(family in name or family in folder for family in IMAGENET_NORMALISED_FAMILIES):
            default, origin = IMAGENET_MEAN_STD, "ImageNet constants (DeiT/MAE/DINO file name)"
        else:
            default, origin = INCEPTION_MEAN_STD, "default for timm ViT weights (inputs in [-1, 1])"
        if mean is not None or std is not None:
            origin = "argument and " + origin
        mean = list(default[0]) if mean is None else mean
        std = list(default[1]) if std is None else std
    values = {}
    for key, given in (("mean", mean), ("std", std)):
        given = [float(v) for v in given]
        if len(given) == 1:
            given = given * channels
        elif len(given) != channels:
            if len(given) == 3 and channels != 3:  # e.g. RGB statistics for a grey model: their average
                given = [sum(given) / 3.0] * channels
            else:
                raise UserInputError(f"{key} has {len(given)} values for a {channels}-channel model.")
        values[key] = given
    if any(s <= 0 for s in values["std"]):
        raise UserInputError("std values must be positive.")
    return {"scale": 1.0 / 255.0, **values}, origin
