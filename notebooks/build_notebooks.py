"""Build the .ipynb notebooks from their sources in src/ (percent format: `# %%` starts a code cell,
`# %% [markdown]` a markdown cell, `# %% tags=["parameters"]` the parameters cell).

    python notebooks/build_notebooks.py                  # every src/NN_name.py -> NN_name.ipynb, no outputs
    python notebooks/build_notebooks.py 01_train_vit     # only these

Run the notebooks afterwards (see notebooks/README.md) to commit them with their outputs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
_HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def cells_from_source(text: str) -> list:
    """The notebook cells of a percent-format source."""
    cells, kind, tags, lines = [], None, [], []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind is None or not body:
            return
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            body = body.replace("# %matplotlib inline", "%matplotlib inline")
            cell = nbformat.v4.new_code_cell(body)
            if tags:
                cell.metadata["tags"] = tags
            cells.append(cell)

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            flush()
            kind = "markdown" if match["md"] else "code"
            tags = json.loads(match["tags"]) if match["tags"] else []
            lines = []
        else:
            lines.append(line)
    flush()
    return cells


def build(source: Path, target: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells_from_source(source.read_text())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids: no churn in diffs when rebuilt
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, target)


def main(argv: list[str]) -> int:
    sources = [HERE / "src" / f"{Path(name).stem}.py" for name in argv] or sorted((HERE / "src").glob("*.py"))
    for source in sources:
        target = HERE / f"{source.stem}.ipynb"
        build(source, target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
