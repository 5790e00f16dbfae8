"""The only skips a CI run (``CI=true``) accepts; any other skip fails the run (see ``conftest.py``).

Each entry names the tests (an ``fnmatch`` pattern on the node id), the start of the skip reason it may
give, and why skipping is right there. A skip that matches no entry is a failure under ``CI=true``:
a missing dependency, data or file must not quietly turn a check off.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import NamedTuple


class AllowedSkip(NamedTuple):
    nodeid: str
    reason: str
    why: str


FULL_MNIST = "full MNIST not found"

ALLOWED_SKIPS: list[AllowedSkip] = [
    AllowedSkip("tests/test_datasets.py::test_real_mnist", FULL_MNIST,
                "checks the 60,000/10,000 shapes of the real file, which the packaged sample cannot stand in for"),
    AllowedSkip("tests/test_training.py::test_short_real_mnist_fit_*", FULL_MNIST,
                "its stated accuracy is measured on 8,000 real training digits; the sample has 5,000"),
    AllowedSkip("tests/test_export_*.py::*", "exports run on TensorFlow",
                "the export tests run once, under the TensorFlow backend (tests/run.sh repeats only `backends`)"),
    AllowedSkip("tests/test_compat.py::*", "the corrections are to Keras' TensorFlow trainer",
                "keras_vit.compat patches only Keras' TensorFlow trainer and optimizer"),
    AllowedSkip("tests/test_edge_runtime.py::*", "the parity export runs once, under the TensorFlow backend",
                "as above: the export it needs is made under TensorFlow"),
]


def allowed(nodeid: str, reason: str) -> AllowedSkip | None:
    """The entry that allows ``nodeid`` to skip with ``reason``, or ``None``."""
    for entry in ALLOWED_SKIPS:
        if fnmatchcase(nodeid, entry.nodeid) and reason.startswith(entry.reason):
            return entry
    return None
