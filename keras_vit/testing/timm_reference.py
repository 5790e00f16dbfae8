"""timm reference models for parity tests and benchmarks (torch and timm are test dependencies only).

Everything here builds timm models with ``pretrained=False`` and a fixed seed: nothing is downloaded.
Typical use::

    ref = make_timm_vit(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, seed=0)
    save_state_dict(ref, tmp_path / "ref.safetensors")
    images = random_images(2, 32)                      # NHWC, already normalised
    expected = timm_logits(ref, images)                # timm runs them as NCHW
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: The two torchvision operators whose schemas :func:`import_timm` may have to declare.
_TORCHVISION_OPS = ("nms", "qnms")
_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_timm():
    """Import and return ``timm``, working around a torchvision build that does not match torch.

    Why: timm imports torchvision. PyPI's torchvision wheel is a CUDA build whose compiled extension
    cannot load beside the CPU-only ``torch==2.13.0`` this project tests with; torchvision then still
    imports its pure-Python part, which registers fake (meta) kernels for ``torchvision::nms`` and
    ``torchvision::qnms`` and fails with ``RuntimeError: operator torchvision::nms does not exist``
    because the extension never declared those operators.

    What: only when that exact error happens, this declares the two operator *schemas* (no kernels)
    with ``torch.library.define`` and imports torchvision again, so that its pure-Python modules
    load. timm's ViT uses none of torchvision's compiled operators (they are detection ops), so the
    models built here are unaffected. Where torchvision works, it is imported untouched.
    """
    if "timm" in sys.modules:
        return sys.modules["timm"]
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op in _TORCHVISION_OPS:
            try:
                torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
            except RuntimeError:  # already declared
                pass
        import torchvision  # noqa: F401
    import timm

    return timm


def perturb_parameters(model, seed: int = 0) -> None:
    """Give every parameter of a torch ``model`` a non-trivial random value, in place.

    timm initialises biases to 0 and LayerNorms to (1, 0), so a loader that swapped or dropped them
    would still match. Here matrices and kernels get ``N(0, 1/fan_in)`` (activations and logits of
    order 1, softmax far from uniform), LayerNorm scales ``1 + N(0, 0.2)``, every vector and the
    class/position tokens ``N(0, 0.1..0.5)``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim >= 2 and name not in ("cls_token", "pos_embed"):
                fan_in = math.prod(param.shape[1:])
                param.copy_(noise / math.sqrt(fan_in))
            elif name in ("cls_token", "pos_embed"):
                param.copy_(0.5 * noise if name == "cls_token" else 0.1 * noise)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.1 * noise)


def make_timm_vit(
    img_size: int = 32,
    patch_size: int = 4,
    embed_dim: int = 64,
    depth: int = 3,
    num_heads: int = 4,
    mlp_ratio: float = 4.0,
    num_classes: int = 10,
    in_chans: int = 3,
    seed: int = 0,
    perturb: bool = True,
    **kwargs: Any,
):
    """A timm ``VisionTransformer`` built from scratch (no download), seeded, in eval mode.

    ``perturb`` replaces timm's initial values by :func:`perturb_parameters` ones so that every
    parameter affects the logits. Extra ``kwargs`` go to timm's constructor.
    """
    import torch

    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        **kwargs,
    )
    if perturb:
        perturb_parameters(model, seed)
    return model.eval()


def make_timm_preset(name: str = "vit_tiny_patch16_224", seed: int = 0, perturb: bool = True, **kwargs: Any):
    """``timm.create_model(name, pretrained=False, **kwargs)``, seeded (and perturbed), in eval mode."""
    import torch

    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if perturb:
        perturb_parameters(model, seed)
    return model.eval()


def timm_state_dict(model_or_state_dict) -> dict[str, np.ndarray]:
    """A torch model's (or state dict's) tensors as float32 NumPy arrays."""
    state = model_or_state_dict
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    return {k: v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)
            for k, v in state.items()}


def save_state_dict(model_or_state_dict, path: str | os.PathLike) -> Path:
    """Save a timm state dict as ``.safetensors`` (safetensors.numpy) or ``.pth``/``.bin`` (torch.save)."""
    path = Path(path)
    arrays = timm_state_dict(model_or_state_dict)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    elif path.suffix in (".pth", ".pt", ".bin"):
        import torch

        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    else:
        raise ValueError(f"Unknown state-dict suffix {path.suffix!r}: use .safetensors, .pth or .bin.")
    return path


def timm_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
    """Run a torch model on NHWC float images (transposed to NCHW); returns NumPy logits."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(np.transpose(images_nhwc, (0, 3, 1, 2)), dtype=np.float32))
        return model(x).cpu().numpy()


def random_images(
    n: int, height: int, width: int | None = None, channels: int = 3, seed: int = 0
) -> np.ndarray:
    """``(n, height, width, channels)`` float32 standard-normal images (already "normalised")."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, height, width or height, channels)).astype("float32")


def write_google_npz(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike,
    num_heads: int,
    prefix: str = "",
    pre_logits: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write a timm ViT state dict in the layout of Google's original Flax ``.npz`` checkpoints.

    The inverse of timm's own ``_load_weights``: ``embedding/kernel`` ``(P, P, C, D)``,
    ``cls``, ``Transformer/posembed_input/pos_embedding``, per block ``LayerNorm_0``,
    ``MultiHeadDotProductAttention_1/{query,key,value}/kernel`` ``(D, H, d)`` and ``bias`` ``(H, d)``,
    ``out/kernel`` ``(H, d, D)``, ``LayerNorm_2``, ``MlpBlock_3/Dense_{0,1}``, then
    ``Transformer/encoder_norm`` and ``head``; every key under ``prefix`` (e.g. ``"opt/target/"``).
    ``pre_logits`` adds a ``(kernel (D, R), bias (R,))`` representation layer.
    """
    sd = timm_state_dict(state_dict)
    out: dict[str, np.ndarray] = {}
    dim = sd["cls_token"].shape[-1]
    head_dim = dim // num_heads
    out["embedding/kernel"] = sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
    out["embedding/bias"] = sd["patch_embed.proj.bias"]
    out["cls"] = sd["cls_token"]
    out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b, g = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        for flax, torch_name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[g + flax + "/scale"] = sd[b + torch_name + ".weight"]
            out[g + flax + "/bias"] = sd[b + torch_name + ".bias"]
        qkv_w = sd[b + "attn.qkv.weight"].reshape(3, dim, dim)  # (3, out, in)
        qkv_b = sd[b + "attn.qkv.bias"].reshape(3, num_heads, head_dim)
        mha = g + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            out[mha + name + "/kernel"] = qkv_w[j].T.reshape(dim, num_heads, head_dim)
            out[mha + name + "/bias"] = qkv_b[j]
        out[mha + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(num_heads, head_dim, dim)
        out[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[g + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[g + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    out["Transformer/encoder_norm/scale"] = sd["norm.weight"]
    out["Transformer/encoder_norm/bias"] = sd["norm.bias"]
    if "head.weight" in sd:
        out["head/kernel"] = sd["head.weight"].T
        out["head/bias"] = sd["head.bias"]
    if pre_logits is not None:
        out["pre_logits/kernel"], out["pre_logits/bias"] = pre_logits
    path = Path(path)
    np.savez(path, **{prefix + k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()})
    return path


def save_to_hub_cache(model, cache: str | os.PathLike, repo: str, commit: str = "0" * 40,
                      model_config: Mapping[str, Any] | None = None) -> Path:
    """Save a timm ``model`` with timm's ``save_for_hf`` into a Hugging Face Hub cache as ``repo`` at ``commit``.

    The layout is the one ``huggingface_hub`` keeps (``models--ORG--NAME/snapshots/COMMIT/{model.safetensors,
    config.json}`` and ``refs/main``), so that ``hf_hub_download`` -- and so keras-vit's and timm's
    ``hf-hub:`` loading -- find the files there with ``HF_HUB_OFFLINE=1`` and no network. ``repo`` is
    ``ORG/NAME``; ``model_config`` adds config entries (``label_names``...). Returns the snapshot folder.
    """
    timm = import_timm()
    folder = Path(cache) / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    timm.models.save_for_hf(model, snapshot, model_config=dict(model_config or {}), safe_serialization=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot
