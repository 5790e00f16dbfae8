"""``keras-vit presets``: list the named models with their parameter counts, or the pretrained checkpoints."""

from __future__ import annotations

import argparse
import json


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


def run(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _pretrained(args)
    from keras_vit.presets import PRESETS, count_params, create_model

    rows = []
    for name, spec in PRESETS.items():
        rows.append({"preset": name, "parameters": count_params(create_model(name)),
                     "description": spec.get("description", "")})
    if args.json:
        print(json.dumps(rows))
    else:
        width = max(len(r["preset"]) for r in rows)
        for r in rows:
            print(f"{r['preset']:<{width}}  {r['parameters']:>12,}  {r['description']}")
    return 0
