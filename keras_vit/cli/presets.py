"""``keras-vit presets``: list the named models with their parameter counts."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list the model presets and their parameter counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
