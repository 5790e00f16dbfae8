"""Shared fixtures (MNIST digits, a briefly trained model, the backend) and the CI rule on skips.

Tests that need digits read real MNIST when it is found (``$KERAS_VIT_DATA`` or ``../shared/data``
beside the repository) and otherwise the packaged sample, ``keras_vit/data/mnist_sample.npz``: the
same code runs on any machine. The few tests that truly need full MNIST ask for ``real_data_dir``,
are marked ``real_data`` and skip without it. Under ``CI=true`` a skip that ``tests/allowed_skips.py``
does not list fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "keras_vit" / "data" / "mnist_sample.npz"
SAMPLE_TRAIN = 4000  # the sample's first 4,000 training digits train; its other 1,000 join its 1,000 test digits
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_data_dir() -> Path | None:
    """``$KERAS_VIT_DATA``, else ``../shared/data`` beside the repository, if it holds real MNIST."""
    candidates = [os.environ.get("KERAS_VIT_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist" / "mnist.npz").is_file():
            return Path(candidate)
    return None


def sample_split():
    """The packaged sample as ``(x_train, y_train), (x_test, y_test)``: 4,000 training and 2,000 test digits.

    The sample holds 5,000 training and 1,000 test digits of MNIST; its last 1,000 training digits are
    held out as extra test digits, so that tests that verify on 1,000 digits and check on others
    (``test_int8_agrees_with_float_on_real_mnist``) have unseen digits for both.
    """
    import numpy as np

    with np.load(SAMPLE, allow_pickle=False) as d:
        x_train, y_train, x_test, y_test = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    return ((x_train[:SAMPLE_TRAIN], y_train[:SAMPLE_TRAIN]),
            (np.concatenate([x_test, x_train[SAMPLE_TRAIN:]]), np.concatenate([y_test, y_train[SAMPLE_TRAIN:]])))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A folder with ``mnist/mnist.npz``: real MNIST if found, else the sample split written there."""
    found = shared_data_dir()
    if found is not None:
        return found
    import numpy as np

    folder = tmp_path_factory.mktemp("data")
    (folder / "mnist").mkdir()
    (x_train, y_train), (x_test, y_test) = sample_split()
    np.savez(folder / "mnist" / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return folder


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder with full MNIST; tests that ask for it are marked ``real_data`` and skip without it."""
    found = shared_data_dir()
    if found is None:
        pytest.skip("full MNIST not found: set KERAS_VIT_DATA to a folder holding mnist/mnist.npz")
    return found


@pytest.fixture(scope="session")
def backend() -> str:
    import keras

    return keras.backend.backend()


def load_mnist_arrays(data_dir: Path | None = None):
    """``(x_train, y_train), (x_test, y_test)`` uint8 MNIST from ``data_dir``, real MNIST or the sample split."""
    import numpy as np

    if data_dir is None:
        data_dir = shared_data_dir()
    if data_dir is None:
        return sample_split()
    with np.load(Path(data_dir) / "mnist" / "mnist.npz", allow_pickle=False) as d:
        return (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])


def epochs_for_steps(samples: int, batch_size: int, steps: int) -> int:
    """Whole epochs over ``samples`` that come nearest to ``steps`` optimizer steps (at least 1).

    Brief fits state their accuracy for a number of steps; on the 4,000-digit sample split an epoch
    is a third of one over 12,000 real digits, so it takes three times the epochs to train as far.
    """
    per_epoch = -(-samples // batch_size)
    return max(1, round(steps / per_epoch))


@pytest.fixture(scope="session")
def trained_mnist_model(tmp_path_factory, request):
    """A ``vit_mnist`` trained briefly (about 190 steps of batch 128) on MNIST, saved as ``.keras``; returns its path.

    Real MNIST's first 12,000 training digits for 2 epochs (188 steps) when found, else the sample
    split's 4,000 for 6 epochs (192 steps). About 77-80 % on real MNIST's test digits; 81.05 % on the
    sample split's 2,000 test digits (measured with this recipe in a script, TF CPU): a real, imperfect
    classifier whose near-ties make the INT8 agreement check meaningful, and enough for export parity
    checks on real digits.
    Plain ``compile``/``fit`` on purpose: it must not depend on the code under test in the training module.
    Under pytest-xdist (``-n 2``) the first worker that needs it trains it and the others wait for its file.
    """
    if not hasattr(request.config, "workerinput"):  # one process (no xdist worker): train here
        return _train_mnist_model(tmp_path_factory.mktemp("trained") / "vit_mnist.keras")
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / "trained" / "vit_mnist.keras"  # shared by the workers
    path.parent.mkdir(exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            _train_mnist_model(path)
    return path


def _train_mnist_model(path: Path) -> Path:
    """The recipe of :func:`trained_mnist_model`, saved to ``path``."""
    import keras

    import keras_vit

    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = load_mnist_arrays()
    x = (x_train[:12000].astype("float32")[..., None] / 255.0 - 0.1307) / 0.3081
    y = y_train[:12000].astype("int32")
    model = keras_vit.create_model("vit_mnist", class_names=[str(i) for i in range(10)])
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=128, epochs=epochs_for_steps(len(x), 128, 188), verbose=0)
    model.save(path)
    return path


# --- The quick suite: `pytest -m "not slow"` --------------------------------------------------------

#: Fixtures that train or run whole programs; every test that uses one (directly or through another
#: fixture) is marked ``slow``.
SLOW_FIXTURES = {
    "trained_mnist_model": "trains vit_mnist for about 190 steps",
    "finetuned": "fine-tunes a timm ViT for 376 steps",
    "tiny_results": "runs python -m benchmarks.run --tiny",
    "jax_run": "trains in a 2-device JAX subprocess",
    "tf_run": "trains in a 2-device TensorFlow subprocess",
}


#: The files that take longest, longest first (CI timings). In pytest-xdist workers (tests/run.sh: ``--dist
#: loadfile --no-loadscope-reorder``) they start first, so that no long file is left to the end of the run.
LONG_FILES = ("test_readme.py", "test_distribute.py", "test_notebooks.py", "test_export_web.py", "test_cli.py",
              "test_training.py", "test_export_litert.py",
              "test_benchmarks.py", "test_edge_runtime.py", "test_export_onnx.py", "test_fusion.py", "test_model.py",
              "test_weights.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts the same way (a stable sort)
        rank = {name: i for i, name in enumerate(LONG_FILES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


# --- CI: a skip that tests/allowed_skips.py does not list is a failure -------------------------------

_unexpected_collection_skips: list[str] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true``, an unlisted skip of a test is reported as that test's failure."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        from allowed_skips import allowed

        reason = _skip_reason(report)
        if allowed(report.nodeid, reason) is None:
            report.outcome = "failed"
            report.longrepr = f"unexpected skip under CI=true (tests/allowed_skips.py does not list it): {reason}"


def pytest_collectreport(report):
    """Under ``CI=true``, a skipped module (``importorskip``, a module-level skip) fails the session."""
    if CI and report.skipped:
        from allowed_skips import allowed

        reason = _skip_reason(report)
        if allowed(report.nodeid, reason) is None:
            _unexpected_collection_skips.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter):
    if _unexpected_collection_skips:
        terminalreporter.section("unexpected skips under CI=true (tests/allowed_skips.py does not list them)")
        for line in _unexpected_collection_skips:
            terminalreporter.line(line)


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_collection_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- Running a script where some packages cannot be imported ------------------------------------------

#: ``python -c IMPORT_BLOCKER.format(blocked=NAMES, script=PATH) ARGS...`` runs ``PATH`` as ``__main__``
#: with every import of a top-level package in ``NAMES`` failing, then prints on stderr the imports it
#: refused and the blocked modules that ended up loaded: ``BLOCKED-ATTEMPTS [...] LOADED [...]``.
IMPORT_BLOCKER = """
import runpy, sys
BLOCKED = {blocked!r}
attempts = []
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{{name}} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
sys.argv = [{script!r}] + sys.argv[1:]
try:
    runpy.run_path({script!r}, run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("BLOCKED-ATTEMPTS", attempts, "LOADED", loaded, file=sys.stderr)
"""
