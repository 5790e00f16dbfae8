"""Helpers for tests and benchmarks: reference models from other libraries (never used by the package).

Nothing here is imported by ``keras_vit`` itself; importing this package does not import torch or timm
(the functions do, when called).
"""

from keras_vit.testing.keras_weights import perturb_weights
from keras_vit.testing.timm_reference import (
    import_timm,
    make_timm_preset,
    make_timm_vit,
    perturb_parameters,
    random_images,
    save_state_dict,
    save_to_hub_cache,
    timm_logits,
    timm_state_dict,
    write_google_npz,
)

__all__ = [
    "import_timm",
    "make_timm_preset",
    "make_timm_vit",
    "perturb_parameters",
    "perturb_weights",
    "random_images",
    "save_state_dict",
    "save_to_hub_cache",
    "timm_logits",
    "timm_state_dict",
    "write_google_npz",
]
