"""The models compared with timm: a keras-vit preset (with overrides) and the timm model of the same shape.

Light on purpose (keras-vit and timm only, no exporter): the training benchmarks import it on machines
that have neither TensorFlow nor tf2onnx, such as a GPU box with only PyTorch and JAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One comparison: a keras-vit preset (with overrides) and the timm model of the same shape."""

    preset: str
    overrides: dict[str, Any]
    timm: dict[str, Any]  # {"name": ...} for timm.create_model, else VisionTransformer kwargs
    train_batch: int

    def keras_model(self):
        from keras_vit.presets import create_model

        return create_model(self.preset, **self.overrides)

    def timm_model(self, seed: int = 0):
        from keras_vit.testing.timm_reference import make_timm_preset, make_timm_vit

        if "name" in self.timm:
            return make_timm_preset(self.timm["name"], seed=seed)
        return make_timm_vit(seed=seed, **self.timm)


SPECS: dict[str, ModelSpec] = {
    "vit_tiny_patch16_224": ModelSpec("vit_tiny_patch16_224", {}, {"name": "vit_tiny_patch16_224"}, 32),
    "vit_mnist": ModelSpec(
        "vit_mnist", {"dropout": 0.0},
        dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0,
             num_classes=10), 128,
    ),
    "vit_small_patch16_224": ModelSpec("vit_small_patch16_224", {}, {"name": "vit_small_patch16_224"}, 32),
    "vit_base_patch16_224": ModelSpec("vit_base_patch16_224", {}, {"name": "vit_base_patch16_224"}, 32),
    # --tiny: seconds, for the tests.
    "tiny": ModelSpec(
        "vit_mnist", {"dropout": 0.0, "hidden_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64},
        dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
             num_classes=10), 8,
    ),
}
