"""Opening ``.keras`` files: the library's one owner of the checks (missing, not ``.keras``, corrupt,
foreign classes, not a keras-vit model) and of safe-mode loading.

Every reader of a saved model goes through here (``keras-vit evaluate``, ``train --init``, the
exporters), so a bad file gets the same one-sentence :class:`~keras_vit.errors.UserInputError` (exit 2)
wherever it is passed. The path checks run before Keras is imported: a wrong path is reported without
loading a framework.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from keras_vit.errors import UserInputError


def check_model_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`, or one sentence saying why it cannot be a ``.keras`` model file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserInputError(f"Model file not found: {path}.")
    if path.is_dir() or path.suffix != ".keras":
        raise UserInputError(f"{path} is not a .keras file; pass a model saved with model.save('NAME.keras').")
    return path


def foreign_classes(path: str | os.PathLike) -> list[str]:
    """Classes in a ``.keras`` config that come neither from Keras nor from keras-vit (sorted names)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except Exception:
        return []
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and "class_name" in node and module.split(".")[0] not in ("keras", "keras_vit"):
                found.add(str(node.get("registered_name") or f"{module}.{node['class_name']}"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(found)


def load_keras_model(path: str | os.PathLike):
    """Load a ``.keras`` file in Keras' safe mode (no ``Lambda`` code), uncompiled, with keras-vit's layers
    registered; any Keras model (the exporters also take plain image classifiers)."""
    path = check_model_path(path)
    if not zipfile.is_zipfile(path):
        raise UserInputError(f"{path} is not a valid .keras file (not a zip archive): it is truncated or corrupt.")
    import keras

    import keras_vit.layers  # noqa: F401  (registers the serializable layers)
    import keras_vit.model  # noqa: F401  (and the model)

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types here (ValueError, TypeError, KeyError, OSError...)
        foreign = foreign_classes(path)
        if foreign:
            raise UserInputError(
                f"{path} is not a keras-vit model: it uses custom classes that Keras cannot rebuild without "
                f"their code ({', '.join(foreign[:5])})."
            ) from None
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise UserInputError(f"{path} could not be loaded as a Keras model (corrupt .keras?): {reason}") from None


def load_vit_model(path: str | os.PathLike, needed_by: str = "this"):
    """:func:`load_keras_model`, and one sentence if the file holds another kind of model than a keras-vit
    ``VisionTransformer`` (``needed_by`` names the command or function that needs one)."""
    model = load_keras_model(path)  # the path checks come first: a wrong path loads no framework
    from keras_vit.model import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UserInputError(
            f"{Path(path).expanduser()} holds a {type(model).__name__}, not a keras-vit VisionTransformer; "
            f"{needed_by} needs a model saved by keras-vit."
        )
    return model
