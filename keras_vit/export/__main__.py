"""``python -m keras_vit.export JOB.json``: the TensorFlow child process of an export (no argument parsing).

:mod:`keras_vit.export.tf_subprocess` writes the job: ``{"model": PATH, "output": PATH, "report": PATH,
"options": ExportOptions as a dict}``. The child runs the export under ``KERAS_BACKEND=tensorflow`` and
writes the report there (or ``{"error", "exit_code"}``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from keras_vit.errors import KerasViTError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m keras_vit.export JOB.json (the export's child process; use keras-vit export)",
              file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    report_file = Path(job["report"])
    try:
        from keras_vit.export import export
        from keras_vit.export.options import ExportOptions

        report = export(job["model"], job["output"], ExportOptions(**job["options"]))
    except KerasViTError as err:
        report_file.write_text(json.dumps({"error": str(err), "exit_code": err.exit_code}))
        return err.exit_code
    except Exception as err:
        message = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        report_file.write_text(json.dumps({"error": message, "exit_code": 1}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    report_file.write_text(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
