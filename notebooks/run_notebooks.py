"""Execute notebooks in place (with their outputs), as committed: from a fresh kernel, cells in order.

    python notebooks/run_notebooks.py                       # all three, their own parameters
    python notebooks/run_notebooks.py 03_export_and_edge.ipynb -p LATENCY_RUNS=50 --output /tmp/out
    python notebooks/run_notebooks.py --clean-only          # only tidy the saved outputs (see below)

The kernel runs in notebooks/ (outputs/ and figures/ land there) with the Agg matplotlib backend.
``-p NAME=VALUE`` (a Python literal) overrides a parameter in an extra cell after the "parameters" cell.
Saved outputs are tidied for readers (:func:`clean_outputs`): no terminal colour codes (Keras' model
summary prints them), and paths relative to notebooks/ instead of where the notebook happened to run.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = "keras-vit-notebooks"

#: Terminal escape sequences (colours, bold: ``ESC [ ... m``, and other CSI/OSC sequences).
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
#: An absolute path into a notebooks/ folder (this checkout's or another's): made relative to it.
_NOTEBOOKS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"`]+/)*?notebooks/")


def clean_text(text: str, here: Path = HERE) -> str:
    """``text`` without terminal escapes, with absolute paths into notebooks/ made relative to it and
    the home folder written ``~``."""
    text = _ANSI.sub("", text)
    text = text.replace(f"{here}{os.sep}", "")
    text = _NOTEBOOKS_PATH.sub("", text)
    home = os.path.expanduser("~")
    return text.replace(f"{home}{os.sep}", f"~{os.sep}") if home not in ("", "/") else text


def clean_outputs(nb) -> int:
    """Tidy every text output of ``nb`` in place with :func:`clean_text`; returns how many changed."""
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            fields = [(output, "text")] if "text" in output else []
            fields += [(output.get("data", {}), key) for key in ("text/plain", "text/html", "text/markdown")
                       if key in output.get("data", {})]
            fields += [(output, "traceback")] if "traceback" in output else []
            for holder, key in fields:
                value = holder[key]
                cleaned = [clean_text(v) for v in value] if isinstance(value, list) else clean_text(value)
                if cleaned != value:
                    holder[key] = cleaned
                    changed += 1
    return changed


def _write(nb, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: every NN_*.ipynb here")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--output", help="write executed notebooks to this folder instead of in place")
    parser.add_argument("--clean-only", action="store_true",
                        help="do not execute: only remove colour codes and machine paths from the saved outputs")
    args = parser.parse_args(argv)
    names = args.notebooks or sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    if args.clean_only:
        for name in names:
            nb = nbformat.read(HERE / name, as_version=4)
            changed = clean_outputs(nb)
            if changed:
                _write(nb, Path(args.output) / name if args.output else HERE / name)
            print(f"{name}: {changed} output field(s) cleaned")
        return 0
    values = {}
    for item in args.parameter:
        name, _, value = item.partition("=")
        values[name.strip()] = ast.literal_eval(value)

    import nbclient
    from ipykernel.kernelspec import install

    prefix = tempfile.mkdtemp(prefix="kernel-")
    install(kernel_name=KERNEL, prefix=prefix)
    os.environ["JUPYTER_PATH"] = str(Path(prefix) / "share" / "jupyter")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in names:
        path = HERE / name
        nb = nbformat.read(path, as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]  # a rerun
        if values:
            index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
            cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()),
                                            metadata={"tags": ["injected-parameters"]})
            cell["id"] = "injected-parameters"
            nb.cells.insert(index + 1, cell)
        start = time.perf_counter()
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=1800,
                                         resources={"metadata": {"path": str(HERE)}})
        client.execute()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        clean_outputs(nb)
        target = Path(args.output) / name if args.output else path
        _write(nb, target)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {target} ({target.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
