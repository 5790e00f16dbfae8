"""keras-vit: Vision Transformers for Keras 3 that train on any backend and ship to the edge.

``import keras_vit`` loads no framework: it picks an installed Keras backend when none was chosen
(:mod:`keras_vit.startup`), and the names below are imported on first use (PEP 562), so the command
line starts quickly. Keras can load a saved keras-vit model as soon as Keras is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from keras_vit import startup as _startup
from keras_vit.errors import KerasViTError, UserInputError

_startup.choose_backend()
_startup.register_layers_on_keras_import()

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "PRESETS": "keras_vit.presets",
    "count_params": "keras_vit.presets",
    "create_model": "keras_vit.presets",
    "list_presets": "keras_vit.presets",
    "Dataset": "keras_vit.datasets",
    "load_dataset": "keras_vit.datasets",
    "VisionTransformer": "keras_vit.model",
    "TrainConfig": "keras_vit.options",
    "evaluate": "keras_vit.training",
    "fit": "keras_vit.training",
    "from_checkpoint": "keras_vit.weights",
    "list_pretrained": "keras_vit.weights",
}
_SUBMODULES = ("layers",)

__all__ = [  # every name of _LAZY and _SUBMODULES, and the errors
    "PRESETS",
    "Dataset",
    "KerasViTError",
    "TrainConfig",
    "UserInputError",
    "VisionTransformer",
    "__version__",
    "count_params",
    "create_model",
    "evaluate",
    "fit",
    "from_checkpoint",
    "layers",
    "list_pretrained",
    "list_presets",
    "load_dataset",
]

if TYPE_CHECKING:
    from keras_vit import layers
    from keras_vit.datasets import Dataset, load_dataset
    from keras_vit.model import VisionTransformer
    from keras_vit.options import TrainConfig
    from keras_vit.presets import PRESETS, count_params, create_model, list_presets
    from keras_vit.training import evaluate, fit
    from keras_vit.weights import from_checkpoint


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
