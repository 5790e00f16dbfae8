"""What ``import keras_vit`` does before any framework loads: pick a Keras backend that is installed.

Keras defaults to TensorFlow and fails when it is missing, although keras-vit trains on JAX or PyTorch
as well. :func:`choose_backend` keeps an explicit choice (``KERAS_BACKEND``, or a Keras config file
naming an installed backend) and otherwise picks the first installed of TensorFlow, JAX and PyTorch,
looked up with ``importlib.util.find_spec`` (nothing is imported). It only sets ``KERAS_BACKEND``
while Keras is not imported yet. :func:`register_layers_on_keras_import` makes Keras load our saved
models after a plain ``import keras_vit`` even though that import loads no framework itself.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys

#: Backends in the order :func:`choose_backend` tries them.
BACKENDS = ("tensorflow", "jax", "torch")


def keras_config_path() -> str:
    """The Keras config file Keras reads: ``$KERAS_HOME/keras.json``, else ``~/.keras/keras.json``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras.json")


def is_installed(backend: str) -> bool:
    """Whether ``backend``'s framework can be imported (looked up, not imported)."""
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken package
        return False


def _config_backend() -> str | None:
    try:
        with open(keras_config_path()) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


def choose_backend() -> tuple[str | None, str]:
    """``(backend, why)``; sets ``KERAS_BACKEND`` when keras-vit picked it.

    ``why`` is ``"KERAS_BACKEND"`` (the user's), ``"keras.json"`` (Keras' config file names an installed
    backend), ``"auto"`` (keras-vit picked the first installed of :data:`BACKENDS`), ``"keras"`` (Keras
    was imported already: its choice stands) or ``"none"`` (no backend installed: Keras will say so).
    The first call decides; later calls return the same answer.
    """
    global _choice
    if _choice is None:
        _choice = _choose()
    return _choice


_choice: tuple[str | None, str] | None = None


def _choose() -> tuple[str | None, str]:
    if "keras" in sys.modules:
        try:
            return sys.modules["keras"].backend.backend(), "keras"
        except Exception:  # keras half-imported
            return os.environ.get("KERAS_BACKEND"), "keras"
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    configured = _config_backend()
    # Keras writes keras.json with "tensorflow" on its first import whatever runs, so a config file
    # naming a framework that is not installed is not taken as a choice.
    if configured and (configured not in BACKENDS or is_installed(configured)):
        return configured, "keras.json"
    for backend in BACKENDS:
        if is_installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return backend, "auto"
    return None, "none"


def backend_note(command: str = "keras-vit train") -> str:
    """One line: which Keras backend runs, why, and how to pick another (``keras-vit train`` prints it)."""
    backend, why = choose_backend()
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
    reason = {
        "KERAS_BACKEND": "set by KERAS_BACKEND",
        "keras.json": f"set in {keras_config_path()}",
        "auto": f"the first installed of {', '.join(BACKENDS)}",
    }.get(why, "Keras' default")
    others = [b for b in BACKENDS if b != backend and is_installed(b)] or [b for b in BACKENDS if b != backend]
    return f"Backend: {backend} ({reason}); pick another with e.g. KERAS_BACKEND={others[0]} {command}"


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up logs (oneDNN, CPU features...) unless the user set the level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def register_layers() -> None:
    """Import the modules that register keras-vit's layers and model with Keras' serialization."""
    importlib.import_module("keras_vit.model")


class _RegisterOnKerasImport(importlib.abc.MetaPathFinder):
    """Registers keras-vit's layers right after ``keras`` itself is imported, by anyone."""

    _looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self._looking:
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self._looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            # Our own modules import keras first: they register themselves as their import goes on.
            if not any(name in sys.modules for name in ("keras_vit.model", "keras_vit.layers")):
                register_layers()

        spec.loader.exec_module = exec_then_register
        return spec


def register_layers_on_keras_import() -> None:
    """Register our layers now if Keras is loaded, else as soon as it is (``keras.saving.load_model`` of a
    keras-vit ``.keras`` file then works after a plain ``import keras_vit``)."""
    if "keras" in sys.modules:
        register_layers()
    elif not any(isinstance(f, _RegisterOnKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnKerasImport())
