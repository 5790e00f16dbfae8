"""keras-vit: Vision Transformers for Keras 3 that train on any backend and ship to the edge."""

from keras_vit import layers
from keras_vit.datasets import Dataset, load_dataset
from keras_vit.errors import KerasViTError, UserInputError
from keras_vit.model import VisionTransformer
from keras_vit.presets import PRESETS, count_params, create_model, list_presets
from keras_vit.training import TrainConfig, evaluate, fit
from keras_vit.weights import from_checkpoint, list_pretrained

__version__ = "0.1.0"

__all__ = [
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
