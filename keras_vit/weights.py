"""Pretrained weights: load timm and Google (Flax ``.npz``) ViT checkpoints into keras-vit models, exactly.

Two checkpoint layouts are understood, whatever file holds them:

- **timm** state dicts (``.safetensors``, ``.pth``/``.pt``/``.bin`` from ``torch.save``, or a dict of
  arrays/tensors): ``cls_token``, ``pos_embed``, ``patch_embed.proj.{weight,bias}``,
  ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``, ``head.*``.
- **Google** ``.npz`` files of the original ViT / AugReg releases: ``embedding/*``, ``cls``,
  ``Transformer/posembed_input/pos_embedding``, ``Transformer/encoderblock_{i}/...``,
  ``Transformer/encoder_norm/*``, ``head/*`` (optionally ``pre_logits/*``), with or without the
  ``opt/target/`` prefix.

The mapping onto :class:`~keras_vit.model.VisionTransformer`:

- patch embedding: a ``P x P`` convolution ``(D, C, P, P)`` (Google: ``(P, P, C, D)``) becomes the
  ``(P*P*C, D)`` Dense kernel of ``patch_encoder/projection``, rows in the ``(row, column, channel)``
  order :class:`~keras_vit.layers.PatchExtractor` flattens patches in;
- ``attn.qkv`` ``(3D, D)`` is transposed as is: both order its outputs ``[q | k | v]`` x heads.
  Google's separate ``query/key/value`` kernels ``(D, H, d)`` are flattened and concatenated so;
- every other Linear weight ``(out, in)`` is transposed to a Dense kernel ``(in, out)``.

Everything is validated before anything is assigned: a missing, mis-shaped or unsupported key raises
:class:`~keras_vit.errors.UserInputError` naming the first such key, and the model is left untouched.

Two adaptations are deliberate and reported in the returned :class:`LoadReport`:

- **positional embedding of another grid** (a checkpoint for 224 px loaded into a 160 px model):
  resized with :func:`keras_vit.posembed.resample_position_embedding`: bicubic, class-token row
  kept, ``antialias=True`` by default, which is what ``timm.layers.resample_abs_pos_embed`` and timm's
  own checkpoint loading use;
- **head of another size** (or none in the checkpoint): the new head's kernel and bias are zeros.
  That is the initialisation of Google's ViT fine-tuning code and of timm's ``weight_init="jax"``
  (timm's default init instead draws the new head from a truncated normal, std 0.02); the first
  gradient steps then train the head alone, which keeps the pretrained features intact.

Normalisation: the model's ``preprocessing`` records what the checkpoint expects (see
:func:`checkpoint_preprocessing`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keras_vit.errors import UserInputError
from keras_vit.posembed import resample_position_embedding

#: Attention heads by token width, for timm files (which do not store the head count): the timm and
#: Google ViT family (Ti 192/3, S 384/6, B 768/12, L 1024/16, H 1280/16).
HEADS_BY_WIDTH: dict[int, int] = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

#: ``mean``/``std`` of Google's checkpoints and timm's default ViT weights (inputs in ``[-1, 1]``).
INCEPTION_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
#: The usual ImageNet constants, used by DeiT, MAE and DINO weights.
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
#: File-name fragments of timm weight families trained on ImageNet-normalised inputs.
IMAGENET_NORMALISED_FAMILIES = ("deit", "mae", "dino")

GOOGLE_PREFIXES = ("", "opt/target/")
#: timm ViT variants keras-vit has no layers for, by a key that reveals them (checked first).
UNSUPPORTED_TIMM_FEATURES = {
    "fc_norm.": "average pooling with fc_norm (global_pool='avg')",
    "reg_token": "register tokens",
    "attn_pool.": "attention pooling (MAP head)",
    "norm_pre.": "a pre-encoder LayerNorm (norm_pre, CLIP style)",
    ".ls1.": "layer scale",
    ".q_norm.": "q/k normalisation",
    "patch_embed.norm.": "a normalised patch embedding",
}
_TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_ARCHITECTURE_KEYS = ("hidden_dim", "depth", "mlp_dim", "patch_size", "qkv_bias")


# --------------------------------------------------------------------------------------------------
# Reading files


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
            f"Reading {path.name} needs the safetensors package: pip install 'keras-vit[weights]'."
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
        if f"{prefix}embedding/kernel" in raw:
            arrays = {k[len(prefix):]: _to_numpy(v) for k, v in raw.items() if k.startswith(prefix)}
            return Checkpoint("google", arrays, prefix, name, path)
    state = _unwrap_state_dict(raw)
    if "patch_embed.proj.weight" in state:
        return Checkpoint("timm", {k: _to_numpy(v) for k, v in state.items()}, "", name, path)
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


# --------------------------------------------------------------------------------------------------
# What the checkpoint describes


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


def inspect_checkpoint(checkpoint: Checkpoint) -> CheckpointArchitecture:
    """The architecture a checkpoint's shapes describe (heads from the file for Google, else ``None``).

    The image size comes from the positional embedding: a square grid of ``sqrt(T - 1)`` patches.
    """
    a, src = checkpoint.arrays, checkpoint.source
    if checkpoint.layout == "timm":
        dim, channels, ph, pw = _require(a, "patch_embed.proj.weight", 4, src).shape
        pos = _require(a, "pos_embed", 3, src)
        depth = _block_count(a, "blocks.{}.norm1.weight")
        mlp_dim = _require(a, "blocks.0.mlp.fc1.weight", 2, src).shape[0] if depth else 4 * dim
        head = a.get("head.weight")
        num_classes = int(head.shape[0]) if head is not None and np.ndim(head) == 2 else None
        num_heads = None
        qkv_bias = "blocks.0.attn.qkv.bias" in a
        grid = _square_grid(pos.shape[1], src, "pos_embed")
    else:
        ph, pw, channels, dim = _require(a, "embedding/kernel", 4, src).shape
        pos = _require(a, "Transformer/posembed_input/pos_embedding", 3, src)
        depth = _block_count(a, "Transformer/encoderblock_{}/LayerNorm_0/scale")
        mha = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
        num_heads = int(_require(a, mha + "query/kernel", 3, src).shape[1]) if depth else None
        fc1 = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
        mlp_dim = _require(a, fc1, 2, src).shape[1] if depth else 4 * dim
        head = a.get("head/kernel")
        num_classes = int(head.shape[1]) if head is not None and np.ndim(head) == 2 else None
        qkv_bias = mha + "query/bias" in a
        grid = _square_grid(pos.shape[1], src, "Transformer/posembed_input/pos_embedding")
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


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadReport:
    """What a load did. Printed by ``keras-vit convert``."""

    source: str
    layout: str
    tensors: int = 0
    head: str = "loaded"
    position_embedding: str = "loaded"
    channels: str = "loaded"
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.layout} checkpoint {self.source}: {self.tensors} tensors",
            f"head: {self.head}",
            f"positional embedding: {self.position_embedding}",
        ]
        if self.channels != "loaded":
            lines.append(f"patch embedding: {self.channels}")
        if self.dropped:
            lines.append(f"dropped: {', '.join(self.dropped)}")
        return "\n".join(lines)


def _shape_matches(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(e is None or s == e for s, e in zip(shape, expected, strict=True))


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


class _Plan:
    """Collects (variable, value) pairs; checks every key before a single variable is assigned."""

    def __init__(self, checkpoint: Checkpoint):
        self.arrays = checkpoint.arrays
        self.source = checkpoint.source
        self.prefix = checkpoint.prefix
        self.used: set[str] = set()
        self.assignments: list[tuple[Any, np.ndarray]] = []

    def get(self, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
        if key not in self.arrays:
            raise UserInputError(
                f"{self.source}: missing key {self.prefix + key!r} "
                f"(the model needs shape {_fmt_shape(shape)})."
            )
        value = self.arrays[key]
        if not hasattr(value, "shape") or not _shape_matches(tuple(value.shape), shape):
            raise UserInputError(
                f"{self.source}: key {self.prefix + key!r} has shape {tuple(np.shape(value))}, "
                f"the model needs {_fmt_shape(shape)}."
            )
        self.used.add(key)
        return np.asarray(value, dtype=np.float32)

    def set(self, variable, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != tuple(variable.shape):  # a bug here, not in the file
            raise AssertionError(f"{variable.path}: built {value.shape}, variable is {tuple(variable.shape)}")
        self.assignments.append((variable, value))

    def copy(self, variable, key: str, transform: Callable[[np.ndarray], np.ndarray] | None = None,
             shape: tuple[int | None, ...] | None = None) -> None:
        """``variable <- transform(arrays[key])``; ``shape`` defaults to the variable's (transposed) shape."""
        value = self.get(key, shape if shape is not None else tuple(variable.shape))
        self.set(variable, transform(value) if transform else value)

    def check_leftovers(self, allowed: Callable[[str], bool] = lambda key: False) -> None:
        left = sorted(k for k in self.arrays if k not in self.used and not allowed(k)
                      and hasattr(self.arrays[k], "shape"))
        if left:
            more = f" and {len(left) - 1} more" if len(left) > 1 else ""
            raise UserInputError(
                f"{self.source}: unsupported key {self.prefix + left[0]!r}{more}. keras-vit loads plain ViTs "
                "(class token, learned absolute positions, pre-norm blocks, LayerNorm, linear head); this "
                "checkpoint has parts such a model does not have."
            )

    def commit(self) -> None:
        for variable, value in self.assignments:
            variable.assign(value)


def _adapt_input_conv(weight: np.ndarray, channels: int, source: str) -> np.ndarray:
    """timm's ``adapt_input_conv`` for an ``(D, C, P, P)`` kernel: sum RGB for grey, tile RGB otherwise."""
    have = weight.shape[1]
    if have == channels:
        return weight
    if channels == 1 and have == 3:
        return weight.sum(axis=1, keepdims=True)
    if have == 3:
        repeat = int(math.ceil(channels / 3))
        return np.tile(weight, (1, repeat, 1, 1))[:, :channels] * (3.0 / channels)
    raise UserInputError(
        f"{source}: cannot adapt a {have}-channel patch embedding to {channels} channels "
        "(only 3-channel checkpoints can be adapted)."
    )


def _patch_kernel(weight_oihw: np.ndarray) -> np.ndarray:
    """``(D, C, P, P)`` convolution -> ``(P*P*C, D)`` Dense kernel in (row, column, channel) order."""
    d = weight_oihw.shape[0]
    return weight_oihw.transpose(2, 3, 1, 0).reshape(-1, d)


def _layers(model) -> dict[str, Any]:
    if getattr(model, "stem_filters", None):
        raise UserInputError(
            f"{model.name} has a convolutional stem: timm and Google ViT checkpoints have a plain patch "
            "embedding, so their weights do not map onto it (use a preset without a stem)."
        )
    encoder = model.get_layer("patch_encoder")
    if not getattr(encoder, "class_token", True):
        raise UserInputError("Checkpoints can only be loaded into models with a class token.")
    return {"encoder": encoder, "blocks": model.blocks, "norm": model.get_layer("norm"),
            "head": model.get_layer("head")}


def _check_depth(model, depth: int, source: str, what: str) -> None:
    if depth != model.depth:
        raise UserInputError(
            f"{source}: the checkpoint has {depth} encoder blocks ({what}) but the model has {model.depth}."
        )


def _plan_position_embedding(plan: _Plan, key: str, encoder, report: LoadReport, antialias: bool) -> None:
    variable = encoder.position_embedding
    tokens, dim = variable.shape[1], variable.shape[2]
    value = plan.get(key, (1, None, dim))
    if value.shape[1] != tokens:
        old = _square_grid(value.shape[1], plan.source, plan.prefix + key)
        value = resample_position_embedding(
            value, encoder.grid_size, num_prefix_tokens=1, old_grid=(old, old), antialias=antialias
        )
        new = encoder.grid_size
        report.position_embedding = (
            f"resized {old}x{old} -> {new[0]}x{new[1]} (bicubic{', antialias' if antialias else ''}, "
            "class token kept)"
        )
    plan.set(variable, value)


def _plan_head(plan: _Plan, head, kernel_key: str, bias_key: str, kernel_is_out_in: bool,
               replace_head: bool, report: LoadReport) -> bool:
    """Load the head, or zero it when the checkpoint's has another size (or is absent). True if loaded."""
    dim, classes = head.kernel.shape
    present = kernel_key in plan.arrays or bias_key in plan.arrays
    if present:
        kernel_shape = (None, dim) if kernel_is_out_in else (dim, None)
        kernel = plan.get(kernel_key, kernel_shape)
        stored = kernel.shape[0] if kernel_is_out_in else kernel.shape[1]
        bias = plan.get(bias_key, (stored,))
        if stored == classes:
            plan.set(head.kernel, kernel.T if kernel_is_out_in else kernel)
            plan.set(head.bias, bias)
            report.head = "loaded"
            return True
        if not replace_head:
            raise UserInputError(
                f"{plan.source}: the checkpoint's head has {stored} classes, the model {classes}; "
                "allow a new head (replace_head=True) to fine-tune."
            )
        report.head = f"replaced: {stored} -> {classes} classes, new head zeros"
    else:
        if not replace_head:
            raise UserInputError(f"{plan.source}: missing key {plan.prefix + kernel_key!r} (the head).")
        report.head = f"new: the checkpoint has no head; {classes} classes, zeros"
    plan.set(head.kernel, np.zeros((dim, classes), np.float32))
    plan.set(head.bias, np.zeros((classes,), np.float32))
    return False


def _pre_logits_error(plan: _Plan, key: str) -> UserInputError:
    return UserInputError(
        f"{plan.source}: the checkpoint has a pre_logits (representation) layer ({plan.prefix + key!r}) "
        "between the encoder and its head, which keras-vit models do not have, so its head cannot be used "
        "as is. Load it with another number of classes (num_classes / --num-classes) to fine-tune: "
        "pre_logits is then dropped with the old head, as Google's fine-tuning does."
    )


def _plan_timm(model, checkpoint: Checkpoint, replace_head: bool, adapt_channels: bool,
               antialias: bool) -> tuple[_Plan, LoadReport]:
    plan, report = _Plan(checkpoint), LoadReport(checkpoint.source, "timm")
    for key in checkpoint.arrays:
        feature = next((f for marker, f in UNSUPPORTED_TIMM_FEATURES.items() if marker in key), None)
        if feature:
            raise UserInputError(
                f"{plan.source}: unsupported key {key!r}: this timm model uses {feature}, which keras-vit's "
                "ViT does not have, so its logits could not match."
            )
    parts = _layers(model)
    enc = parts["encoder"]
    dim, p, c = model.hidden_dim, model.patch_size, model.channels
    _check_depth(model, _block_count(checkpoint.arrays, "blocks.{}.norm1.weight"), plan.source,
                 "blocks.{i}.norm1.weight")

    plan.copy(enc.cls_token, "cls_token")
    _plan_position_embedding(plan, "pos_embed", enc, report, antialias)
    conv = plan.get("patch_embed.proj.weight", (dim, None if adapt_channels else c, p, p))
    if conv.shape[1] != c:
        report.channels = f"adapted {conv.shape[1]} -> {c} channels (timm's adapt_input_conv)"
        conv = _adapt_input_conv(conv, c, plan.source)
    plan.set(enc.projection.kernel, _patch_kernel(conv))
    plan.copy(enc.projection.bias, "patch_embed.proj.bias")

    def linear(layer, key):
        out_in = tuple(reversed(layer.kernel.shape))
        plan.copy(layer.kernel, key + ".weight", np.transpose, shape=out_in)
        if layer.use_bias:
            plan.copy(layer.bias, key + ".bias")

    def norm(layer, key):
        plan.copy(layer.gamma, key + ".weight")
        plan.copy(layer.beta, key + ".bias")

    for i, block in enumerate(parts["blocks"]):
        b = f"blocks.{i}."
        norm(block.norm1, b + "norm1")
        linear(block.attn.qkv, b + "attn.qkv")
        linear(block.attn.proj, b + "attn.proj")
        norm(block.norm2, b + "norm2")
        linear(block.mlp.fc1, b + "mlp.fc1")
        linear(block.mlp.fc2, b + "mlp.fc2")
    norm(parts["norm"], "norm")
    loaded = _plan_head(plan, parts["head"], "head.weight", "head.bias", True, replace_head, report)
    if any(k.startswith("pre_logits.") for k in checkpoint.arrays):
        if loaded:
            raise _pre_logits_error(plan, "pre_logits.fc.weight")
        report.dropped.append("pre_logits")
    plan.check_leftovers(allowed=lambda k: k.startswith("pre_logits."))
    report.tensors = len(plan.used)
    return plan, report


def _plan_google(model, checkpoint: Checkpoint, replace_head: bool, adapt_channels: bool,
                 antialias: bool) -> tuple[_Plan, LoadReport]:
    plan, report = _Plan(checkpoint), LoadReport(checkpoint.source, "google")
    parts = _layers(model)
    enc = parts["encoder"]
    dim, p, c, heads = model.hidden_dim, model.patch_size, model.channels, model.num_heads
    head_dim = dim // heads
    _check_depth(model, _block_count(checkpoint.arrays, "Transformer/encoderblock_{}/LayerNorm_0/scale"),
                 plan.source, "Transformer/encoderblock_{i}")

    plan.copy(enc.cls_token, "cls")
    _plan_position_embedding(plan, "Transformer/posembed_input/pos_embedding", enc, report, antialias)
    conv = plan.get("embedding/kernel", (p, p, None if adapt_channels else c, dim)).transpose(3, 2, 0, 1)
    if conv.shape[1] != c:
        report.channels = f"adapted {conv.shape[1]} -> {c} channels (timm's adapt_input_conv)"
        conv = _adapt_input_conv(conv, c, plan.source)
    plan.set(enc.projection.kernel, _patch_kernel(conv))
    plan.copy(enc.projection.bias, "embedding/bias")

    def dense(layer, key):
        plan.copy(layer.kernel, key + "/kernel")
        plan.copy(layer.bias, key + "/bias")

    def norm(layer, key):
        plan.copy(layer.gamma, key + "/scale")
        plan.copy(layer.beta, key + "/bias")

    for i, block in enumerate(parts["blocks"]):
        g = f"Transformer/encoderblock_{i}/"
        mha = g + "MultiHeadDotProductAttention_1/"
        norm(block.norm1, g + "LayerNorm_0")
        kernels = [plan.get(f"{mha}{n}/kernel", (dim, heads, head_dim)) for n in ("query", "key", "value")]
        plan.set(block.attn.qkv.kernel, np.concatenate([k.reshape(dim, dim) for k in kernels], axis=1))
        if block.attn.qkv.use_bias:
            biases = [plan.get(f"{mha}{n}/bias", (heads, head_dim)) for n in ("query", "key", "value")]
            plan.set(block.attn.qkv.bias, np.concatenate([b.reshape(dim) for b in biases]))
        out = plan.get(mha + "out/kernel", (heads, head_dim, dim))
        plan.set(block.attn.proj.kernel, out.reshape(dim, dim))
        plan.copy(block.attn.proj.bias, mha + "out/bias")
        norm(block.norm2, g + "LayerNorm_2")
        dense(block.mlp.fc1, g + "MlpBlock_3/Dense_0")
        dense(block.mlp.fc2, g + "MlpBlock_3/Dense_1")
    norm(parts["norm"], "Transformer/encoder_norm")
    loaded = _plan_head(plan, parts["head"], "head/kernel", "head/bias", False, replace_head, report)
    if any(k.startswith("pre_logits/") for k in checkpoint.arrays):
        if loaded:
            raise _pre_logits_error(plan, "pre_logits/kernel")
        report.dropped.append("pre_logits")
    plan.check_leftovers(allowed=lambda k: k.startswith("pre_logits/"))
    report.tensors = len(plan.used)
    return plan, report


def load_checkpoint(
    model,
    source: str | os.PathLike | Mapping[str, Any] | Checkpoint,
    replace_head: bool = True,
    adapt_channels: bool = False,
    antialias: bool = True,
) -> LoadReport:
    """Load a timm or Google checkpoint (layout detected from its keys) into ``model``, all or nothing.

    Args:
        model: a :class:`~keras_vit.model.VisionTransformer` (class-token pooling for timm parity).
        source: a file path, a state dict, or a :class:`Checkpoint`.
        replace_head: when the checkpoint's head has another number of classes (or none), give the model
            a new zero head instead of raising.
        adapt_channels: accept a patch embedding for another channel count and adapt it as timm does
            (3 -> 1: sum over RGB; 3 -> N: tiled and scaled by 3/N). Otherwise a mismatch is an error.
        antialias: resize a positional embedding of another grid with antialiasing (timm's default).

    Returns:
        A :class:`LoadReport` of what was loaded, replaced or resized.

    Raises:
        UserInputError: naming the first missing, mis-shaped or unsupported key; the model is unchanged.
    """
    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    planner = _plan_timm if checkpoint.layout == "timm" else _plan_google
    plan, report = planner(model, checkpoint, replace_head, adapt_channels, antialias)
    plan.commit()
    return report


def load_timm(model, path_or_state_dict, replace_head: bool = True, adapt_channels: bool = False,
              antialias: bool = True) -> LoadReport:
    """Load a timm ViT state dict (``.safetensors``/``.pth``/``.bin`` path, or a dict) into ``model``.

    See :func:`load_checkpoint` for the arguments; raises if the source is not in timm's layout.
    """
    checkpoint = path_or_state_dict if isinstance(path_or_state_dict, Checkpoint) else \
        read_checkpoint(path_or_state_dict)
    if checkpoint.layout != "timm":
        raise UserInputError(f"{checkpoint.source} is a Google .npz checkpoint: use load_google_npz.")
    return load_checkpoint(model, checkpoint, replace_head, adapt_channels, antialias)


def load_google_npz(model, path: str | os.PathLike, replace_head: bool = True, adapt_channels: bool = False,
                    antialias: bool = True) -> LoadReport:
    """Load an original Google ViT ``.npz`` checkpoint (plain or ``opt/target/`` keys) into ``model``.

    A ``pre_logits`` layer is dropped when the head is replaced and is an error otherwise. See
    :func:`load_checkpoint` for the arguments.
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.layout != "google":
        raise UserInputError(f"{checkpoint.source} is not in Google's .npz layout (no 'embedding/kernel').")
    return load_checkpoint(model, checkpoint, replace_head, adapt_channels, antialias)


def to_timm_state_dict(model) -> dict[str, np.ndarray]:
    """The model's weights as a timm ``VisionTransformer`` state dict of NumPy arrays (back to timm)."""
    from keras import ops

    def np_(variable):
        return np.asarray(ops.convert_to_numpy(variable), dtype=np.float32)

    parts = _layers(model)
    enc = parts["encoder"]
    p, c, d = model.patch_size, model.channels, model.hidden_dim
    sd = {
        "cls_token": np_(enc.cls_token),
        "pos_embed": np_(enc.position_embedding),
        "patch_embed.proj.weight": np_(enc.projection.kernel).reshape(p, p, c, d).transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": np_(enc.projection.bias),
    }
    for i, block in enumerate(parts["blocks"]):
        b = f"blocks.{i}."
        for name, layer in (("norm1", block.norm1), ("norm2", block.norm2)):
            sd[b + name + ".weight"], sd[b + name + ".bias"] = np_(layer.gamma), np_(layer.beta)
        for name, layer in (("attn.qkv", block.attn.qkv), ("attn.proj", block.attn.proj),
                            ("mlp.fc1", block.mlp.fc1), ("mlp.fc2", block.mlp.fc2)):
            sd[b + name + ".weight"] = np_(layer.kernel).T
            if layer.use_bias:
                sd[b + name + ".bias"] = np_(layer.bias)
    sd["norm.weight"], sd["norm.bias"] = np_(parts["norm"].gamma), np_(parts["norm"].beta)
    sd["head.weight"], sd["head.bias"] = np_(parts["head"].kernel).T, np_(parts["head"].bias)
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------
# Building a model from a checkpoint


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
    from keras_vit.model import VisionTransformer

    checkpoint = read_checkpoint(source)
    arch = inspect_checkpoint(checkpoint)
    unknown = set(overrides) - set(VisionTransformer.__init__.__code__.co_varnames) - {"name", "dtype"}
    if unknown:
        raise UserInputError(f"Unknown model option(s): {', '.join(sorted(unknown))}.")
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
    """The starting point of a fine-tuning run: a checkpoint or a saved ``.keras`` model, adapted.

    A ``.keras`` file is loaded (safe mode); if ``num_classes``, ``image_size``, ``channels`` or any
    override differs, a model with the new configuration is built and the weights are carried over
    as from a checkpoint: new zero head, resized positional embedding, adapted patch embedding.
    Anything else is read with :func:`from_checkpoint`. ``None`` keeps what the source has.
    """
    file = Path(path)
    if file.suffix.lower() != ".keras":
        extra = {} if channels is None else {"channels": channels}
        return from_checkpoint(file, num_classes=num_classes, image_size=image_size, **extra, **overrides)
    import keras

    from keras_vit.model import VisionTransformer
    from keras_vit.presets import _match_channels

    if not file.is_file():
        raise UserInputError(f"Model file not found: {file}")
    try:
        model = keras.saving.load_model(file)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for bad files
        raise UserInputError(f"Could not load {file} as a Keras model: {err}") from err
    if not isinstance(model, VisionTransformer):
        raise UserInputError(f"{file} holds a {type(model).__name__}, not a keras_vit VisionTransformer.")
    config = model.get_config()
    changes = dict(overrides)
    if num_classes is not None and int(num_classes) != model.num_classes:
        changes["num_classes"] = int(num_classes)
        changes.setdefault("class_names", None)
    if image_size is not None and _pair(image_size) != tuple(model.image_size):
        changes["image_size"] = list(_pair(image_size))
    if channels is not None and int(channels) != model.channels:
        changes["channels"] = int(channels)
        changes.setdefault("preprocessing", _match_channels(model.preprocessing, int(channels)))
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
