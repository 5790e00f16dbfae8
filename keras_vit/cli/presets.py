"""``keras-vit presets``: list the named models with their parameter counts, or the pretrained checkpoints."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list the model presets and their parameter counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pretrained", action="store_true",
                        help="list the pretrained checkpoints instead (names for create_model(NAME, "
                             "pretrained=True), `convert NAME`, `train --init NAME`), with resolution, classes, "
                             "source")
    parser.set_defaults(func=run)


def _pretrained(args: argparse.Namespace) -> int:
    from keras_vit.weights.hub import PRETRAINED, TIMM_ORG

    rows = [{"name": name, **info.as_dict(), "hub": f"hf-hub:{TIMM_ORG}/{name}"} for name, info in PRETRAINED.items()]
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['resolution']:>4} px  {r['num_classes']:>6,} classes  {r['source']}")
    return 0


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of the :class:`~keras_vit.model.VisionTransformer` a preset's arguments build, computed
    from the arguments alone (no framework is loaded; a test checks it against every built preset).

    Stem: per stage a bias-free ``k x k`` convolution and a batch norm (4 vectors). Patch embedding: a
    dense projection of each flattened patch, a class token and a positional embedding for every token.
    Block: two layer norms, q/k/v and output projections, the two-layer MLP. Then a norm and the head.
    """
    side = config.get("image_size", 224)
    height, width = (side, side) if isinstance(side, int) else tuple(side)
    patch, dim, mlp = config.get("patch_size", 16), config.get("hidden_dim", 768), config.get("mlp_dim", 3072)
    channels, stride, stem = config.get("channels", 3), 1, 0
    filters = config.get("stem_filters") or []
    for f, s in zip(filters, config.get("stem_strides") or [2] * len(filters), strict=True):
        stem += 9 * channels * f + 4 * f  # the stem's 3x3 kernels
        channels, stride = f, stride * s
    tokens = (height // patch) * (width // patch) + 1
    embedding = (patch // stride) ** 2 * channels * dim + dim + dim + tokens * dim
    qkv_bias = 3 * dim if config.get("qkv_bias", True) else 0
    block = 4 * dim + 3 * dim * dim + qkv_bias + dim * dim + dim + dim * mlp + mlp + mlp * dim + dim
    head = 2 * dim + dim * config.get("num_classes", 1000) + config.get("num_classes", 1000)
    return stem + embedding + config.get("depth", 12) * block + head


def run(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _pretrained(args)
    from keras_vit.presets import PRESETS, preset_config

    rows = [{"preset": name, "parameters": parameter_count(preset_config(name)),
             "description": spec.get("description", "")} for name, spec in PRESETS.items()]
    if args.json:
        print(json.dumps(rows))
    else:
        width = max(len(r["preset"]) for r in rows)
        for r in rows:
            print(f"{r['preset']:<{width}}  {r['parameters']:>12,}  {r['description']}")
    return 0
