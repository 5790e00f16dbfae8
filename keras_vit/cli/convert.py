"""``keras-vit convert``: a timm or Google ViT checkpoint -> a ``.keras`` model with the same logits."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW (e.g. 224 or 160x224), got {text!r}")
    return (values[0], values[-1])


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a timm (.safetensors/.pth/.bin, or hf-hub:timm/NAME) or Google (.npz) ViT checkpoint to .keras",
        description=(
            "Build the keras-vit model a timm state dict or an original Google ViT .npz describes and load "
            "its weights exactly (same logits as timm). A different --num-classes gets a new zero head; a "
            "different --image-size resizes the positional embedding bicubically. The checkpoint's input "
            "normalisation is recorded in the model (default mean=std=0.5, the value of Google's and "
            "timm's usual ViT weights; ImageNet constants for DeiT/MAE/DINO file names; a config.json "
            "beside the file wins; --mean/--std override). A pretrained name (hf-hub:timm/ARCH.TAG, or ARCH.TAG "
            "from `keras-vit presets --pretrained`) is read from the Hugging Face cache or downloaded into it, "
            "with its config's normalisation and class names."
        ),
    )
    parser.add_argument("checkpoint", help="checkpoint file (.safetensors, .pth, .pt, .bin, .npz), hub folder, or "
                                           "pretrained name (hf-hub:timm/ARCH.TAG, ARCH.TAG)")
    parser.add_argument("--output", "-o", required=True, help="where to write the model (.keras)")
    parser.add_argument("--num-classes", type=int, help="classes of the new head (default: the checkpoint's)")
    parser.add_argument("--image-size", type=_image_size, help="input size S or HxW (default: the checkpoint's)")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean of the checkpoint's inputs")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std of the checkpoint's inputs")
    parser.add_argument("--num-heads", type=int, help="attention heads (needed for timm files of unusual width)")
    parser.add_argument("--channels", type=int, help="input channels; the patch embedding is adapted (e.g. 1)")
    parser.set_defaults(func=run)


def _atomic_save(model, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    from keras_vit.errors import UserInputError

    output = Path(args.output)
    if output.suffix != ".keras":
        raise UserInputError(f"--output must end in .keras, got {output.name!r}.")
    if args.num_classes is not None and args.num_classes < 1:
        raise UserInputError("--num-classes must be a positive integer.")
    from keras_vit.weights.hub import is_pretrained_name

    hub = is_pretrained_name(args.checkpoint)
    if not hub and not Path(args.checkpoint).exists():
        raise UserInputError(f"Checkpoint file not found: {args.checkpoint}")

    from keras_vit.presets import count_params
    from keras_vit.weights import convert_checkpoint, convert_pretrained

    overrides = {}
    if args.num_heads is not None:
        overrides["num_heads"] = args.num_heads
    if args.channels is not None:
        overrides["channels"] = args.channels
    start = time.perf_counter()
    model, report, origin = (convert_pretrained if hub else convert_checkpoint)(
        args.checkpoint, num_classes=args.num_classes, image_size=args.image_size,
        mean=args.mean, std=args.std, **overrides,
    )
    loaded = time.perf_counter()
    _atomic_save(model, output)
    saved = time.perf_counter()
    height, width = model.image_size
    print(report.summary())
    print(
        f"model: {model.preset or 'custom'} {height}x{width}x{model.channels}, patch {model.patch_size}, "
        f"width {model.hidden_dim}, depth {model.depth}, heads {model.num_heads}, MLP {model.mlp_dim}, "
        f"{model.num_classes} classes, {count_params(model):,} parameters"
    )
    print(f"preprocessing: mean {model.preprocessing['mean']} std {model.preprocessing['std']} ({origin})")
    print(f"wrote {output} (load {loaded - start:.1f} s, save {saved - loaded:.1f} s)")
    return 0
