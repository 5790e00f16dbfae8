"""Running a conversion under the TensorFlow backend from a process that uses JAX or PyTorch.

Keras fixes its backend when it is first imported, and the conversion needs TensorFlow. When the
calling process runs another backend, the model is saved as ``.keras`` (if it is not a path already)
and ``python -m keras_vit.export JOB.json`` converts it in a child process with ``KERAS_BACKEND=tensorflow``,
writing to a temporary name beside the output; the child verifies the file against the TensorFlow
reload, then the parent (for ONNX) checks it against its own in-memory model and renames it into place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_vit.errors import KerasViTError
from keras_vit.export.options import ExportOptions
from keras_vit.export.report import ExportReport
from keras_vit.export.verify import error_from_exit_code
from keras_vit.io import atomic_output

CHILD_ENV = "KERAS_VIT_EXPORT_CHILD"


def current_backend() -> str:
    import keras

    return keras.backend.backend()


def needs_subprocess() -> bool:
    """True when this process's Keras backend is not TensorFlow."""
    backend = current_backend()
    if backend != "tensorflow" and os.environ.get(CHILD_ENV):
        raise KerasViTError(f"the export child process runs Keras on {backend}, not tensorflow.")
    return backend != "tensorflow"


def source_check(model, options: ExportOptions, run_logits: Callable[[Path, np.ndarray], np.ndarray]):
    """A ``check`` for :func:`export_in_subprocess` when the model is in memory under JAX or PyTorch.

    The child converted a saved copy; this compares the written float file, run by
    ``run_logits(path, feed)``, with this process's own model on 64 verify images (parity within
    ``options.tolerance``), and records the figure as ``report.source_parity``.
    """
    from keras_vit.export.source import describe_model
    from keras_vit.export.verify import keras_logits, load_verify_data, max_abs_diff, parity_indices, require_parity

    def check(temporary: Path, report: ExportReport) -> None:
        info = describe_model(model)
        data = load_verify_data(options.verify_data, info.image_size, info.channels, info.preprocessing, limit=64)
        index = parity_indices(len(data))
        feed = data.feed(options.include_preprocessing, options.input_dtype)[index]
        diff = max_abs_diff(run_logits(temporary, feed), keras_logits(model, data.inputs[index]))
        require_parity(diff, options.tolerance)
        report.source_parity = {"backend": current_backend(), "max_abs_diff": diff,
                                "samples": int(len(index)), "tolerance": options.tolerance}

    return check


def export_in_subprocess(model_or_path, output: Path, options: ExportOptions, check=None) -> ExportReport:
    """Export in a TensorFlow child process to a temporary name beside ``output``, then move it there.

    The child gets one JSON job file: the model path, the temporary output, where to write its report,
    and ``options`` (:meth:`ExportOptions.to_json`). ``check(temporary_path, report)``, if given, runs in
    this process before the rename and may raise.
    """
    export_format = options.format
    with tempfile.TemporaryDirectory(prefix="keras_vit_export_") as tmp:
        if isinstance(model_or_path, (str, os.PathLike)):
            model_path = Path(model_or_path).absolute()
        else:
            model_path = Path(tmp) / "model.keras"
            model_or_path.save(model_path)
        report_file = Path(tmp) / "report.json"
        with atomic_output(output, directory=export_format == "saved_model") as temporary:
            job = Path(tmp) / "job.json"
            job.write_text(json.dumps({
                "model": str(model_path), "output": str(temporary), "report": str(report_file),
                "options": options.for_another_process().to_dict(),
            }))
            command = [sys.executable, "-m", "keras_vit.export", str(job)]
            env = {**os.environ, "KERAS_BACKEND": "tensorflow", CHILD_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            result = json.loads(report_file.read_text()) if report_file.is_file() else None
            if done.returncode != 0 or result is None or "error" in result:
                if result and "error" in result:
                    raise error_from_exit_code(result["error"], int(result.get("exit_code", 1)))
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise KerasViTError(f"the TensorFlow export process failed (exit {done.returncode}): {last}")
            report = ExportReport.from_dict(result)
            report.converted_in = "a tensorflow subprocess"
            if check is not None:
                check(temporary, report)
        report.path = str(output)
        return report
