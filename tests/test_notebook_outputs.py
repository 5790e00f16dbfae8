"""The committed notebooks' outputs read well anywhere: no terminal colour codes, no paths of the machine
that ran them (``notebooks/run_notebooks.py`` cleans them when it saves; ``--clean-only`` without running)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:home|root|Users|tmp|work|mnt|opt|var)/")


def _run_notebooks():
    pytest.importorskip("nbformat")
    spec = importlib.util.spec_from_file_location("run_notebooks", NOTEBOOKS / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _output_texts(path: Path):
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            values = [output.get("text", "")] + [output.get("data", {}).get(k, "") for k in ("text/plain", "text/html")]
            yield "".join("".join(v) if isinstance(v, list) else v for v in values)


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
def test_committed_outputs_have_no_colour_codes_or_machine_paths(name):
    for text in _output_texts(NOTEBOOKS / name):
        assert "\x1b" not in text, text[:200]
        assert not MACHINE_PATH.search(text), MACHINE_PATH.search(text).string[:300]


def test_clean_text_strips_escapes_and_relativises_paths(tmp_path):
    run_notebooks = _run_notebooks()
    here = tmp_path / "repo" / "notebooks"
    text = ("\x1b[1mModel: \"vit_mnist\"\x1b[0m │ (\x1b[38;5;45mNone\x1b[0m, \x1b[38;5;34m28\x1b[0m)\n"
            f"wrote {here}/outputs/03_export/model.onnx; wrote /elsewhere/clone/notebooks/outputs/a.onnx\n"
            "relative outputs/b.onnx stays")
    assert run_notebooks.clean_text(text, here) == (
        'Model: "vit_mnist" │ (None, 28)\nwrote outputs/03_export/model.onnx; wrote outputs/a.onnx\n'
        "relative outputs/b.onnx stays")
