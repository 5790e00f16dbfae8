"""``python -m keras_vit.export MODEL.keras --format onnx ...``: the export command without the CLI wrapper.

Used by :mod:`keras_vit.export.backend` to convert under ``KERAS_BACKEND=tensorflow``. With
``--report-json FILE`` it writes the report (or ``{"error", "exit_code"}``) there instead of printing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from keras_vit.cli.export import add_arguments, run_export
    from keras_vit.errors import KerasViTError

    parser = argparse.ArgumentParser(prog="python -m keras_vit.export")
    add_arguments(parser)
    parser.add_argument("--report-json", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--raw-input-dtype", default="uint8", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        report = run_export(args)
    except KerasViTError as err:
        if args.report_json is None:
            print(f"error: {err}", file=sys.stderr)
        else:
            args.report_json.write_text(json.dumps({"error": str(err), "exit_code": err.exit_code}))
        return err.exit_code
    except Exception as err:
        message = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        if args.report_json is not None:
            args.report_json.write_text(json.dumps({"error": message, "exit_code": 1}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    if args.report_json is None:
        print("\n".join(report.summary_lines()))
    else:
        args.report_json.write_text(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
