"""The command line starts without a framework, picks an installed backend, and prints no TensorFlow logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_vit.cli.presets import parameter_count
from keras_vit.presets import PRESETS, create_model, preset_config
from keras_vit.startup import BACKENDS

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")

#: Runs ``keras-vit ARGV`` (sys.argv[1:]) in-process, then prints the frameworks it loaded as JSON on the
#: last line of stderr. Optional blocking of modules (``BLOCK=tensorflow,...``), as if not installed.
WRAPPER = f"""
import json, os, sys
for name in filter(None, os.environ.get("BLOCK", "").split(",")):
    sys.modules[name] = None
from keras_vit.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
loaded = [m for m in {FRAMEWORKS!r} if sys.modules.get(m) is not None]
print(json.dumps({{"loaded": loaded, "backend": os.environ.get("KERAS_BACKEND")}}), file=sys.stderr)
sys.exit(code)
"""


def keras_vit(*argv, env=None, timeout=120):
    """``(exit code, stdout, stderr without the last line, {"loaded", "backend"})`` of a fresh process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for key in [k for k, v in full_env.items() if v is None]:
        del full_env[key]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, argv)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    return proc.returncode, proc.stdout, "\n".join(err), json.loads(last)


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["evaluate", "--help"], 0),
    (["export", "--help"], 0),
    (["convert", "--help"], 0),
    (["presets"], 0),
    (["presets", "--json"], 0),
    (["train", "--epochs", "0"], 2),
    (["train", "--augment", "sideways"], 2),
    (["evaluate", "missing.keras", "--dataset", "sample"], 2),
    (["no-such-command"], 2),
])
def test_parsing_and_presets_load_no_framework(argv, code):
    exit_code, stdout, stderr, info = keras_vit(*argv)
    assert exit_code == code, stderr
    assert info["loaded"] == [], f"{argv} imported {info['loaded']}"
    assert "Traceback" not in stderr


def test_presets_table_counts_match_the_built_models():
    exit_code, stdout, _, _ = keras_vit("presets", "--json")
    assert exit_code == 0
    rows = {row["preset"]: row["parameters"] for row in json.loads(stdout)}
    assert list(rows) == list(PRESETS)
    for name in PRESETS:
        assert rows[name] == create_model(name).count_params(), name


@pytest.mark.parametrize("overrides", [
    {"stem_filters": [8, 16], "patch_size": 4, "qkv_bias": False},
    {"stem_filters": [8, 16, 16], "stem_strides": [1, 2, 1], "patch_size": 4, "image_size": (28, 16),
     "num_classes": 3},
])
def test_parameter_count_formula_covers_the_model_options(overrides):
    config = {**preset_config("vit_mnist"), **overrides}
    assert parameter_count(config) == create_model("vit_mnist", **overrides).count_params()


def test_choice_lists_come_from_the_owning_modules():
    from keras_vit.augment import POLICIES
    from keras_vit.cli.main import build_parser
    from keras_vit.distribute import MODES
    from keras_vit.training import TEST_TIME_AUGMENTATIONS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: tuple(a.choices) for a in train._actions if a.choices}
    assert choices["augment"] == ("auto", *POLICIES)
    assert choices["distribute"] == tuple(MODES)
    assert choices["tta"] == tuple(TEST_TIME_AUGMENTATIONS)


def test_lazy_package_keeps_its_names_and_loads_saved_models(tmp_path):
    """``import keras_vit`` imports no framework, yet every public name works and Keras loads a saved
    model after it, whichever of the two was imported first."""
    code = f"""
import sys
import keras_vit
assert not any(m in sys.modules for m in {FRAMEWORKS!r}), "import keras_vit loaded a framework"
extra = ["KerasViTError", "UserInputError", "__version__"]
assert set(keras_vit.__all__) == set(keras_vit._LAZY) | set(keras_vit._SUBMODULES) | set(extra)
for name in keras_vit.__all__:
    getattr(keras_vit, name)
keras_vit.create_model("vit_mnist_p4", num_classes=3).save(sys.argv[1])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    path = tmp_path / "m.keras"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, timeout=300)
    for first, second in (("keras_vit", "keras"), ("keras", "keras_vit")):
        load = (f"import {first}, {second}; m = keras.saving.load_model({str(path)!r}); "
                "print(type(m).__name__, m.num_classes)")
        proc = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, timeout=300)
        assert proc.stdout.split() == ["VisionTransformer", "3"], proc.stderr[-2000:]


def picked_backend(blocked: str, keras_home: Path, backend: str | None = None) -> list[str]:
    """``[KERAS_BACKEND after import keras_vit, whether keras got imported]`` with ``blocked`` modules."""
    code = ("import os, sys\nfor m in filter(None, os.environ['BLOCK'].split(',')): sys.modules[m] = None\n"
            "import keras_vit; print(os.environ.get('KERAS_BACKEND'), 'keras' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_HOME": str(keras_home), "BLOCK": blocked}
    env.pop("KERAS_BACKEND", None)
    if backend:
        env["KERAS_BACKEND"] = backend
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_backend_is_picked_among_the_installed_ones(tmp_path):
    """No KERAS_BACKEND and no Keras config: the first installed of tensorflow, jax, torch, set before
    Keras is imported. A config file naming a backend that is not installed does not count (Keras writes
    one naming tensorflow on its first import); one naming an installed backend, or KERAS_BACKEND, wins."""
    assert BACKENDS == ("tensorflow", "jax", "torch")
    assert picked_backend("", tmp_path) == ["tensorflow", "False"]
    assert picked_backend("tensorflow", tmp_path) == ["jax", "False"]
    assert picked_backend("tensorflow,jax", tmp_path) == ["torch", "False"]
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    assert picked_backend("tensorflow", tmp_path) == ["jax", "False"]
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert picked_backend("", tmp_path) == ["None", "False"]  # Keras reads its config itself
    assert picked_backend("tensorflow", tmp_path, backend="tensorflow") == ["tensorflow", "False"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    from keras_vit.datasets import load_dataset

    ds = load_dataset("sample")
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=ds.x_train[:96, ..., 0], y_train=ds.y_train[:96], x_test=ds.x_test[:16, ..., 0],
             y_test=ds.y_test[:16])
    return path


def test_train_output_is_quiet_with_one_line_per_epoch_in_a_log(tiny_npz, tmp_path):
    """Default options, stdout to a pipe: the backend line first, no TensorFlow log line, no progress-bar
    redraws but one line per epoch."""
    code, stdout, stderr, info = keras_vit(
        "train", "--dataset", tiny_npz, "--epochs", "2", "--batch-size", "32", "--output", tmp_path / "run",
        env={"TF_CPP_MIN_LOG_LEVEL": None}, timeout=900)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"Backend: {os.environ['KERAS_BACKEND']} (set by KERAS_BACKEND); ")
    assert "pick another with e.g. KERAS_BACKEND=" in lines[0] and lines[0].endswith(" keras-vit train")
    for marker in ("oneDNN", "cpu_feature_guard", "I0000", "W0000", "absl::InitializeLog", "rebuild TensorFlow"):
        assert marker not in stdout + stderr, (marker, stderr)
    assert "2 epochs of 3 steps (batch 32)" in stdout
    assert "\r" not in stdout and "\x08" not in stdout and "\x1b[" not in stdout
    assert [line.startswith("3/3 - ") and " - loss: " in line for line in lines].count(True) == 2, stdout


def test_train_runs_without_tensorflow(tiny_npz, tmp_path):
    """A JAX-only install (TensorFlow blocked, no backend configured) trains with JAX and says so."""
    code, stdout, stderr, info = keras_vit(
        "train", "--dataset", tiny_npz, "--epochs", "1", "--batch-size", "32", "--output", tmp_path / "run",
        env={"KERAS_BACKEND": None, "KERAS_HOME": str(tmp_path), "BLOCK": "tensorflow"}, timeout=900)
    assert code == 0, stderr
    assert info["backend"] == "jax" and "tensorflow" not in info["loaded"]
    assert stdout.splitlines()[0] == ("Backend: jax (the first installed of tensorflow, jax, torch); pick "
                                      "another with e.g. KERAS_BACKEND=torch keras-vit train")
    assert "Test accuracy:" in stdout


# ------------------------------------------------------------------------------------------------
# tests/run.sh, with a stand-in `python` that records each run and exits as told


@pytest.fixture()
def run_sh(tmp_path):
    log = tmp_path / "runs.log"
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\nif [ "$2" = ruff ]; then exit 0; fi\n'
                    'echo "$KERAS_BACKEND ${*:3}" >> "$LOG"\necho "1 passed in 0.01s"\n'
                    'code="EXIT_$KERAS_BACKEND"; exit "${!code:-0}"\n')
    stub.chmod(0o755)

    def run(*args, **exits):
        env = {**{k: v for k, v in os.environ.items() if k != "TEST_WORKERS"},
               "PATH": f"{stub.parent}:{os.environ['PATH']}", "LOG": str(log), **{k: str(v) for k, v in exits.items()}}
        log.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(REPO / "tests" / "run.sh"), *args], capture_output=True, text=True,
                              env=env, timeout=60)
        return proc.returncode, log.read_text().splitlines() if log.exists() else [], proc.stdout
    return run


def test_run_sh_passes_filters_to_every_backend(run_sh):
    code, runs, _ = run_sh("-k", "attention or patch", "-x", TEST_WORKERS=0)
    assert code == 0
    assert runs == ["tensorflow -q -k attention or patch -x", "jax -q -m backends -k attention or patch -x",
                    "torch -q -m backends -k attention or patch -x"]
    code, runs, _ = run_sh("-q", "-m", "not slow", "tests/test_layers.py", TEST_WORKERS=1)
    assert code == 0
    assert runs == ["tensorflow -q -m not slow tests/test_layers.py",
                    "jax -q -m backends and (not slow) tests/test_layers.py",
                    "torch -q -m backends and (not slow) tests/test_layers.py"]


def test_run_sh_runs_tensorflow_and_jax_in_xdist_workers(run_sh):
    """By default two pytest-xdist workers, a test file each at a time; $TEST_WORKERS sets how many."""
    code, runs, stdout = run_sh("-m", "not slow", "-x")
    assert code == 0
    assert runs == ["tensorflow -q -n 2 --dist loadfile --no-loadscope-reorder -m not slow -x",
                    "jax -q -n 2 --dist loadfile --no-loadscope-reorder -m backends and (not slow) -x",
                    "torch -q -m backends and (not slow) -x"]
    assert '=== KERAS_BACKEND=tensorflow pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" -x' in stdout
    code, runs, _ = run_sh("-k", "cli", TEST_WORKERS=3)
    assert code == 0 and runs[0] == "tensorflow -q -n 3 --dist loadfile --no-loadscope-reorder -k cli"


def test_run_sh_accepts_backend_runs_that_select_nothing(run_sh):
    code, runs, stdout = run_sh("-k", "cli", EXIT_jax=5, EXIT_torch=5)
    assert code == 0 and len(runs) == 3
    assert "=== jax: no test selected" in stdout and "=== torch: no test selected" in stdout
    assert run_sh("-k", "nothing", EXIT_tensorflow=5, EXIT_jax=5, EXIT_torch=5)[0] == 5
    code, runs, stdout = run_sh(EXIT_jax=1)
    assert code == 1 and len(runs) == 2 and "=== jax: FAILED (pytest exit code 1)" in stdout
