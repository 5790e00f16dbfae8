"""The loader: one plan, fed by a :class:`~keras_vit.weights.tables.CheckpointFormat`, fills a model all or nothing.

The mapping onto :class:`~keras_vit.model.VisionTransformer`:

- patch embedding: a ``P x P`` convolution ``(D, C, P, P)`` (Google: ``(P, P, C, D)``) becomes the
  ``(P*P*C, D)`` Dense kernel of ``patch_encoder/projection``, rows in the ``(row, column, channel)``
  order :class:`~keras_vit.layers.PatchExtractor` flattens patches in;
- ``attn.qkv`` ``(3D, D)`` is transposed as is: both order its outputs ``[q | k | v]`` x heads.
  Google's separate ``query/key/value`` kernels ``(D, H, d)`` are flattened and concatenated so;
- every other Linear weight ``(out, in)`` is transposed to a Dense kernel ``(in, out)``.

Everything is validated before anything is assigned: a missing, mis-shaped or unsupported key raises
:class:`~keras_vit.errors.UserInputError` naming the first such key, and the model is left untouched.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_vit.errors import UserInputError
from keras_vit.posembed import resample_position_embedding
from keras_vit.weights.reading import (
    Checkpoint,
    _block_count,
    _square_grid,
    checkpoint_format,
    read_checkpoint,
)
from keras_vit.weights.tables import DENSE, HEADS_OUT, HEADS_QKV, LINEAR, NORM, CheckpointFormat


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


def _plan_block(plan: _Plan, fmt: CheckpointFormat, i: int, block, heads: int) -> None:
    """Plan block ``i``'s tensors from the table's ``block_tensors``, in its order."""
    kernel_suffix, bias_suffix = fmt.linear_suffixes
    for part, (_, kind) in fmt.block_tensors.items():
        layer = functools.reduce(getattr, part.split("."), block)
        key = fmt.block_key(i, part)
        if kind == NORM:
            plan.copy(layer.gamma, key + fmt.norm_suffixes[0])
            plan.copy(layer.beta, key + fmt.norm_suffixes[1])
        elif kind in (LINEAR, DENSE):
            out_in = tuple(reversed(layer.kernel.shape))
            if kind == LINEAR:
                plan.copy(layer.kernel, key + kernel_suffix, np.transpose, shape=out_in)
            else:
                plan.copy(layer.kernel, key + kernel_suffix)
            if layer.use_bias:
                plan.copy(layer.bias, key + bias_suffix)
        elif kind == HEADS_QKV:
            dim = layer.kernel.shape[0]
            names = ("query", "key", "value")
            kernels = [plan.get(f"{key}{n}{kernel_suffix}", (dim, heads, dim // heads)) for n in names]
            plan.set(layer.kernel, np.concatenate([k.reshape(dim, dim) for k in kernels], axis=1))
            if layer.use_bias:
                biases = [plan.get(f"{key}{n}{bias_suffix}", (heads, dim // heads)) for n in names]
                plan.set(layer.bias, np.concatenate([b.reshape(dim) for b in biases]))
        elif kind == HEADS_OUT:
            dim = layer.kernel.shape[1]
            plan.set(layer.kernel, plan.get(key + kernel_suffix, (heads, dim // heads, dim)).reshape(dim, dim))
            plan.copy(layer.bias, key + bias_suffix)
        else:  # a table names a kind this loader does not know: a bug in the table
            raise AssertionError(f"{fmt.name}: unknown tensor kind {kind!r} for {part}")


def _plan_load(model, checkpoint: Checkpoint, replace_head: bool, adapt_channels: bool,
               antialias: bool) -> tuple[_Plan, LoadReport]:
    """Every (variable, value) pair of ``checkpoint`` for ``model``, checked; nothing assigned yet."""
    fmt = checkpoint_format(checkpoint)
    plan, report = _Plan(checkpoint), LoadReport(checkpoint.source, fmt.name)
    for key in checkpoint.arrays:
        feature = next((f for marker, f in fmt.unsupported.items() if marker in key), None)
        if feature:
            raise UserInputError(
                f"{plan.source}: unsupported key {key!r}: this {fmt.name} model uses {feature}, which "
                "keras-vit's ViT does not have, so its logits could not match."
            )
    parts = _layers(model)
    enc = parts["encoder"]
    dim, p, c = model.hidden_dim, model.patch_size, model.channels
    _check_depth(model, _block_count(checkpoint.arrays, fmt.depth_pattern()), plan.source, fmt.depth_label)

    plan.copy(enc.cls_token, fmt.cls_token)
    _plan_position_embedding(plan, fmt.pos_embed, enc, report, antialias)
    channels = None if adapt_channels else c
    if fmt.patch_layout == "OIHW":
        conv = plan.get(fmt.patch_kernel, (dim, channels, p, p))
    else:
        conv = plan.get(fmt.patch_kernel, (p, p, channels, dim)).transpose(3, 2, 0, 1)
    if conv.shape[1] != c:
        report.channels = f"adapted {conv.shape[1]} -> {c} channels (timm's adapt_input_conv)"
        conv = _adapt_input_conv(conv, c, plan.source)
    plan.set(enc.projection.kernel, _patch_kernel(conv))
    plan.copy(enc.projection.bias, fmt.patch_bias)
    for i, block in enumerate(parts["blocks"]):
        _plan_block(plan, fmt, i, block, model.num_heads)
    plan.copy(parts["norm"].gamma, fmt.norm + fmt.norm_suffixes[0])
    plan.copy(parts["norm"].beta, fmt.norm + fmt.norm_suffixes[1])
    loaded = _plan_head(plan, parts["head"], fmt.head_kernel, fmt.head_bias, fmt.head_out_in, replace_head, report)
    pre_logits = sorted(k for k in checkpoint.arrays if k.startswith(fmt.pre_logits))
    if pre_logits:
        if loaded:
            kernel = next((k for k in pre_logits if k.endswith(fmt.linear_suffixes[0])), pre_logits[0])
            raise _pre_logits_error(plan, kernel)
        report.dropped.append("pre_logits")
    plan.check_leftovers(allowed=lambda k: k.startswith(fmt.pre_logits))
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
    plan, report = _plan_load(model, checkpoint, replace_head, adapt_channels, antialias)
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
