"""Named model configurations and the ``create_model`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keras_vit.errors import UserInputError

if TYPE_CHECKING:  # the table reads without loading Keras (``keras-vit presets``)
    import keras

    from keras_vit.model import VisionTransformer

MNIST_PREPROCESSING = {"scale": 1.0 / 255.0, "mean": [0.1307], "std": [0.3081]}
INCEPTION_PREPROCESSING = {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

_TIMM_TINY = dict(hidden_dim=192, depth=12, num_heads=3, mlp_dim=768)
_TIMM_SMALL = dict(hidden_dim=384, depth=12, num_heads=6, mlp_dim=1536)
_TIMM_BASE = dict(hidden_dim=768, depth=12, num_heads=12, mlp_dim=3072)
_IMAGENET = dict(image_size=224, patch_size=16, channels=3, num_classes=1000,
                 preprocessing=INCEPTION_PREPROCESSING)

PRESETS: dict[str, dict[str, Any]] = {
    "vit_mnist": dict(
        description="28x28x1, patch 7 (16 patches), the classic tutorial ViT",
        image_size=28, patch_size=7, channels=1, num_classes=10, hidden_dim=64, depth=6,
        num_heads=4, mlp_dim=128, dropout=0.1, preprocessing=MNIST_PREPROCESSING,
    ),
    "vit_mnist_p4": dict(
        description="28x28x1, patch 4 (49 patches): vit_mnist's width on a finer grid, the accurate recipe",
        image_size=28, patch_size=4, channels=1, num_classes=10, hidden_dim=64, depth=6,
        num_heads=4, mlp_dim=128, dropout=0.0, drop_path=0.05, preprocessing=MNIST_PREPROCESSING,
    ),
    "vit_mnist_convstem": dict(
        description="28x28x1, conv stem (32, 64, 64; strides 1, 2, 2) + patch 4 (49 tokens), mean-pooled: "
                    "a hybrid ViT, the most accurate on small images",
        image_size=28, patch_size=4, channels=1, num_classes=10, hidden_dim=64, depth=6,
        num_heads=4, mlp_dim=128, dropout=0.0, drop_path=0.05, stem_filters=[32, 64, 64],
        stem_strides=[1, 2, 2], pooling="avg", preprocessing=MNIST_PREPROCESSING,
    ),
    "vit_cifar_p4": dict(
        description="32x32x3, patch 4 (64 patches), for CIFAR-sized images",
        image_size=32, patch_size=4, channels=3, num_classes=10, hidden_dim=192, depth=6,
        num_heads=3, mlp_dim=384, dropout=0.1, drop_path=0.1,
        preprocessing={"scale": 1.0 / 255.0, "mean": [0.4914, 0.4822, 0.4465],
                       "std": [0.2470, 0.2435, 0.2616]},
    ),
    "vit_cifar_convstem": dict(
        description="32x32x3, conv stem (64, 128, 192; strides 1, 2, 2) + patch 4 (64 tokens), mean-pooled: "
                    "the hybrid for a fast CIFAR-10 run on one GPU",
        image_size=32, patch_size=4, channels=3, num_classes=10, hidden_dim=192, depth=6, num_heads=3,
        mlp_dim=384, dropout=0.0, drop_path=0.1, stem_filters=[64, 128, 192], stem_strides=[1, 2, 2],
        pooling="avg", preprocessing={"scale": 1.0 / 255.0, "mean": [0.4914, 0.4822, 0.4465],
                                      "std": [0.2470, 0.2435, 0.2616]},
    ),
    "vit_tiny_patch16_224": dict(description="timm vit_tiny_patch16_224 (ViT-Ti/16)", **_IMAGENET, **_TIMM_TINY),
    "vit_small_patch16_224": dict(description="timm vit_small_patch16_224 (ViT-S/16)", **_IMAGENET, **_TIMM_SMALL),
    "vit_base_patch16_224": dict(description="timm vit_base_patch16_224 (ViT-B/16)", **_IMAGENET, **_TIMM_BASE),
}


def list_presets() -> list[str]:
    """Names of the available presets."""
    return list(PRESETS)


def preset_config(preset: str) -> dict[str, Any]:
    """The constructor arguments of ``preset`` (a copy), without its description."""
    if preset not in PRESETS:
        raise UserInputError(
            f"Unknown preset {preset!r}. Available presets: {', '.join(PRESETS)}."
        )
    config = {k: v for k, v in PRESETS[preset].items() if k != "description"}
    return {**config, "preset": preset}


def create_model(preset: str = "vit_mnist", pretrained: bool = False, **overrides: Any) -> VisionTransformer:
    """Build a :class:`VisionTransformer` from a named preset, or with pretrained weights by name.

    Any constructor argument can be overridden, e.g. ``create_model("vit_tiny_patch16_224",
    num_classes=10, image_size=32, channels=1)``. The model outputs logits and is built.

    With ``pretrained=True``, ``preset`` names a checkpoint on the Hugging Face Hub as timm does:
    ``"vit_base_patch16_224.augreg2_in21k_ft_in1k"`` (see :func:`keras_vit.list_pretrained`), an
    architecture alone for its default tag, or ``"hf-hub:timm/ARCH.TAG"``; it is downloaded into the
    Hub's cache (or read from it) and loaded exactly, with its normalisation and class names. A
    different ``num_classes`` gets a new zero head, a different ``image_size`` a resized positional
    embedding (see :func:`keras_vit.weights.load_pretrained`). Without ``pretrained``, ``ARCH.TAG``
    builds the preset ``ARCH`` untrained, as in timm.
    """
    from keras_vit.model import VisionTransformer, check_model_options
    from keras_vit.preprocessing import adapt_to_channels

    if pretrained:
        from keras_vit.weights.hub import load_pretrained

        return load_pretrained(preset, **overrides)
    if preset not in PRESETS and "." in preset and preset.split(".", 1)[0] in PRESETS:
        preset = preset.split(".", 1)[0]
    config = preset_config(preset)
    check_model_options(overrides)
    config.update(overrides)
    if "channels" in overrides and "preprocessing" not in overrides:
        config["preprocessing"] = adapt_to_channels(config["preprocessing"], config["channels"])
    config.setdefault("name", preset)
    return VisionTransformer(**config)


def count_params(model: keras.Model) -> int:
    """Total number of parameters (trainable and not)."""
    import keras

    return int(sum(int(keras.ops.size(v)) for v in model.weights))
