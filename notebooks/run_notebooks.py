"""Execute notebooks in place (with their outputs), as committed: from a fresh kernel, cells in order.

    python notebooks/run_notebooks.py                       # all three, their own parameters
    python notebooks/run_notebooks.py 03_export_and_edge.ipynb -p LATENCY_RUNS=50 --output /tmp/out

The kernel runs in notebooks/ (outputs/ and figures/ land there) with the Agg matplotlib backend.
``-p NAME=VALUE`` (a Python literal) overrides a parameter in an extra cell after the "parameters" cell.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = "keras-vit-notebooks"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: every NN_*.ipynb here")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--output", help="write executed notebooks to this folder instead of in place")
    args = parser.parse_args(argv)
    names = args.notebooks or sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    values = {}
    for item in args.parameter:
        name, _, value = item.partition("=")
        values[name.strip()] = ast.literal_eval(value)

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
        target = Path(args.output) / name if args.output else path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, target)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {target} ({target.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
