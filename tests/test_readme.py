"""The README's code blocks run verbatim, in order, as a new user would run them after the first command.

Every fenced ``bash`` and ``python`` block of README.md runs in a temporary folder (with the clone's
``export/`` beside it, as in a clone) unless an HTML comment ``<!-- not run: REASON -->`` stands right
above it. In a ``bash`` block, a line's environment set-up steps (``python3 -m venv``, ``. .venv/bin/activate``,
``pip install``) are left out: the tests already run in the environment they make. Python blocks share one
interpreter, as they would in one session. Then the outputs are checked: the files the README says the
commands write, the first command's printed lines (the README's ``text`` block after it), the edge runtime's
top-k lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^( *)```(\w*)\s*$")
SETUP_STEP = re.compile(r"^(python3? -m venv\b|\. \S*/bin/activate$|source \S*/bin/activate$|pip install\b)")

# Runs each block in order in one process: python blocks exec'd in a shared namespace, bash blocks in bash.
DRIVER = r"""
import json, subprocess, sys
steps = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for i, (kind, code) in enumerate(steps):
    print(f"=== block {i} ({kind})", flush=True)
    if kind == "python":
        exec(compile(code, f"README block {i}", "exec"), namespace)
        sys.stdout.flush()
    else:
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], stderr=subprocess.STDOUT)
        if result.returncode:
            sys.exit(f"README block {i} exited with {result.returncode}:\n{code}")
print("=== done", flush=True)
"""


def readme_blocks(text: str) -> list[dict]:
    """Fenced blocks of ``text``: ``{"lang", "code", "skip_reason"}`` in order; indented fences included."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group(2):
            i += 1
            continue
        indent, lang = len(match.group(1)), match.group(2)
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        skip = NOT_RUN.search(previous)
        body, i = [], i + 1
        while not re.match(r"^ *```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        blocks.append({"lang": lang, "code": "\n".join(body) + "\n", "skip_reason": skip and skip.group(1)})
        i += 1
    return blocks


def without_setup(code: str) -> str:
    """``code`` with the environment set-up steps of each ``&&`` chain left out."""
    kept_lines = []
    for line in code.splitlines():
        steps = [step.strip() for step in line.split("&&")]
        kept = [step for step in steps if not SETUP_STEP.match(step)]
        if kept:
            kept_lines.append(" && ".join(kept))
    return "\n".join(kept_lines) + "\n"


def test_readme_blocks_are_marked_and_parsed():
    blocks = readme_blocks(README.read_text())
    runnable = [b for b in blocks if b["lang"] in ("bash", "python") and not b["skip_reason"]]
    skipped = [b for b in blocks if b["skip_reason"]]
    assert len(runnable) >= 6, [b["code"][:60] for b in runnable]
    assert all(b["lang"] in ("bash", "python", "text") for b in blocks), [b["lang"] for b in blocks]
    # The first command's set-up is left out, its job kept; the test command itself is not run.
    first = next(b for b in blocks if "python3 -m venv" in b["code"])
    assert not first["skip_reason"]
    assert without_setup(first["code"]).strip() == "keras-vit train"
    assert any("tests/run.sh" in b["code"] for b in skipped)


def _expected_lines(blocks: list[dict]) -> list[re.Pattern]:
    """The README's sample output of the first command, ``...`` matching anything."""
    text = next(b["code"] for b in blocks if b["lang"] == "text" and b["code"].startswith("Training "))
    return [re.compile(".*".join(re.escape(part) for part in line.strip().split("...")))
            for line in text.splitlines() if line.strip() and line.strip() != "..."]


@pytest.mark.slow
def test_readme_code_runs_verbatim(tmp_path):
    blocks = readme_blocks(README.read_text())
    steps = [(b["lang"], without_setup(b["code"]) if b["lang"] == "bash" else b["code"])
             for b in blocks if b["lang"] in ("bash", "python") and not b["skip_reason"]]
    (tmp_path / "export").symlink_to(REPO_ROOT / "export", target_is_directory=True)
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    result = subprocess.run([sys.executable, "driver.py", "steps.json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=3600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "=== done" in out

    # The first command: what the README says it prints, and the files it says it writes.
    lines = [line.strip() for line in out.replace("\r", "\n").splitlines()]
    for pattern in _expected_lines(blocks):
        assert any(pattern.fullmatch(line) for line in lines), (pattern.pattern, out[-6000:])
    run = tmp_path / "runs" / "vit_mnist_sample"
    history = json.loads((run / "history.json").read_text())
    assert history["status"] == "completed"
    assert history["test"]["accuracy"] > 0.5          # 10 epochs on the sample: about 0.9

    # Python: the quickstart's saved model and the recipe's run; the ViT-Ti/16 override's 64 patches.
    assert (tmp_path / "model.keras").is_file()
    assert json.loads((tmp_path / "runs" / "quickstart" / "history.json").read_text())["status"] == "completed"
    assert re.search(r"^test accuracy \d+\.\d\d%$", out, re.M)

    # Export and the edge kit: both files, three top-3 lines, a benchmark.
    assert (run / "model.onnx").is_file() and (run / "model.int8.onnx").is_file()
    top3 = re.findall(r"^digits\.npy\[(\d)\]: \S+ \(0\.\d+\), \S+ \(0\.\d+\), \S+ \(0\.\d+\)$", out, re.M)
    assert top3 == ["0", "1", "2"], out[-4000:]
    assert re.search(r"throughput: [\d.]+ images/s", out)
