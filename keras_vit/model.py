"""The Vision Transformer classifier as a functional ``keras.Model``."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterable
from typing import Any

import keras

from keras_vit.errors import UserInputError
from keras_vit.layers import ConvStem, PatchEncoder, PatchExtractor, TokenPooling, TransformerEncoderBlock

#: How raw 0..255 pixels become the model's input: ``input = (raw * scale - mean) / std``.
IDENTITY_PREPROCESSING: dict[str, Any] = {"scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0]}


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise UserInputError(f"image_size must be an int or (height, width), got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_model_options(options: Iterable[str]) -> None:
    """Raise :class:`UserInputError` naming any of ``options`` that :class:`VisionTransformer` does not take.

    The accepted names are the constructor's parameters (from its signature, not its local variables)
    plus ``name``.
    """
    parameters = inspect.signature(VisionTransformer.__init__).parameters
    known = {p for p, spec in parameters.items() if spec.kind is spec.POSITIONAL_OR_KEYWORD} - {"self"}
    unknown = set(options) - known - {"name"}
    if unknown:
        raise UserInputError(f"Unknown model option(s): {', '.join(sorted(unknown))}.")


@keras.saving.register_keras_serializable(package="keras_vit")
class VisionTransformer(keras.Model):
    """ViT image classifier: patches -> tokens -> pre-norm encoder blocks -> LayerNorm -> head.

    With ``stem_filters`` it is a hybrid ViT: a :class:`~keras_vit.layers.ConvStem` of 3x3
    convolutions runs first and the patches are cut from its output, each token still covering
    ``patch_size x patch_size`` pixels of the image.

    Input: float images ``(B, H, W, C)``, already preprocessed as ``self.preprocessing`` says.
    Output: logits ``(B, num_classes)``.

    Layer names follow timm (``blocks.{i}.attn.qkv`` becomes ``block_{i}/attn/qkv``), so weights map
    one to one.

    Args:
        image_size: ``S`` or ``(H, W)``.
        patch_size: side of the square patches.
        channels: image channels.
        num_classes: size of the classification head.
        hidden_dim: token width.
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_dim: MLP hidden width.
        dropout: dropout in the blocks and on the embedded tokens.
        attention_dropout: dropout on attention weights.
        drop_path: maximum stochastic-depth rate, increased linearly over the blocks.
        qkv_bias: bias on q/k/v.
        layer_norm_epsilon: LayerNorm epsilon.
        pooling: ``"token"`` (class token) or ``"avg"`` (mean of patch tokens).
        class_names: optional label names, stored with the model and written into exports.
        preprocessing: ``{"scale", "mean", "std"}`` mapping raw pixels to the model input.
        preset: name of the preset the model was built from, if any.
        stem_filters: channels of each convolution of a convolutional stem (``None``: plain ViT).
        stem_strides: stride (1 or 2) of each stem convolution, 2 for all by default; ``patch_size``
            must be a multiple of their product.
        dtype: a dtype policy (``"bfloat16"``, ``"mixed_bfloat16"``, a ``keras.DTypePolicy``) for every
            layer; ``None`` follows the global policy. The head computes in float32 under a mixed
            policy (Keras' mixed-precision convention), in the policy's dtype otherwise.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        channels: int = 3,
        num_classes: int = 1000,
        hidden_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        layer_norm_epsilon: float = 1e-6,
        pooling: str = "token",
        class_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        preset: str | None = None,
        stem_filters: list[int] | None = None,
        stem_strides: list[int] | None = None,
        dtype: str | keras.DTypePolicy | dict | None = None,
        **kwargs,
    ):
        height, width = _pair(image_size)
        policy = keras.dtype_policies.get(dtype) if dtype is not None else None
        # Mixed precision keeps the logits in float32; a plain policy (bfloat16 everywhere) is followed.
        mixed = policy is None or policy.compute_dtype != policy.variable_dtype
        head_dtype = "float32" if mixed else policy
        stem_filters = [int(f) for f in stem_filters] if stem_filters else None
        stem = ConvStem(stem_filters, strides=stem_strides, name="stem", dtype=policy) if stem_filters else None
        stem_strides = stem.strides if stem else None
        stem_stride = stem.stride if stem else 1
        if patch_size % stem_stride:
            raise UserInputError(
                f"patch_size {patch_size} is not a multiple of the convolutional stem's stride {stem_stride} "
                f"(strides {stem_strides})."
            )
        if height % patch_size or width % patch_size:
            raise UserInputError(
                f"image_size {height}x{width} is not a multiple of patch_size {patch_size}."
            )
        if int(channels) < 1 or int(num_classes) < 1:
            raise UserInputError("channels and num_classes must be positive integers.")
        if class_names is not None and len(class_names) != num_classes:
            raise UserInputError(
                f"{len(class_names)} class names given for a model with {num_classes} classes."
            )
        grid = (height // patch_size, width // patch_size)
        num_patches = grid[0] * grid[1]

        images = keras.Input(shape=(height, width, channels), name="images")
        features = stem(images) if stem else images
        patches = PatchExtractor(patch_size // stem_stride, name="patch_extractor", dtype=policy)(features)
        x = PatchEncoder(
            num_patches, hidden_dim, grid_size=grid, dropout=dropout, name="patch_encoder", dtype=policy
        )(patches)
        for i in range(depth):
            rate = drop_path * i / max(depth - 1, 1)
            x = TransformerEncoderBlock(
                num_heads,
                mlp_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                drop_path=rate,
                qkv_bias=qkv_bias,
                layer_norm_epsilon=layer_norm_epsilon,
                # The head reads the class token only: the last block need not compute the others.
                class_token_only=pooling == "token" and i == depth - 1,
                name=f"block_{i}",
                dtype=policy,
            )(x)
        x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm", dtype=policy)(x)
        x = TokenPooling(pooling, num_prefix_tokens=1, name="pool", dtype=policy)(x)
        logits = keras.layers.Dense(num_classes, name="head", dtype=head_dtype)(x)
        super().__init__(inputs=images, outputs=logits, **kwargs)
        if policy is not None:  # Functional models take no dtype argument: set the outer one too
            self.dtype_policy = policy

        self.image_size = (height, width)
        self.patch_size = int(patch_size)
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.hidden_dim = int(hidden_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.drop_path = float(drop_path)
        self.qkv_bias = bool(qkv_bias)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.pooling = pooling
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocessing = dict(preprocessing or IDENTITY_PREPROCESSING)
        self.preset = preset
        self.stem_filters = stem_filters
        self.stem_strides = stem_strides

    @property
    def blocks(self) -> list[TransformerEncoderBlock]:
        """The encoder blocks, in order."""
        return [self.get_layer(f"block_{i}") for i in range(self.depth)]

    @contextlib.contextmanager
    def every_token(self):
        """Within this context the last block computes every token's output, as timm's ViT does.

        With class-token pooling the last block computes the class token alone (see
        :class:`~keras_vit.layers.TransformerEncoderBlock`'s ``class_token_only``): the logits are
        the same, from 6 % fewer FLOPs for ViT-Ti/16 (10 % for vit_mnist). Calls and traces made inside this
        context compute all tokens instead, for attention maps and for exporters that look for the
        full block (the ONNX fusion prunes the graph again on its own).
        """
        with contextlib.ExitStack() as stack:
            for block in self.blocks:
                stack.enter_context(block.every_token())
            yield self

    def attention_scores(self, images) -> list:
        """Attention weights of every block, ``depth`` tensors of ``(B, heads, T, T)``.

        Runs the model's own layers (inference mode) on preprocessed ``images``; token 0 is the class
        token, tokens ``1..N`` the patches in row-major order.
        """
        if self.stem_filters:
            images = self.get_layer("stem")(images, training=False)
        x = self.get_layer("patch_encoder")(self.get_layer("patch_extractor")(images), training=False)
        scores = []
        with self.every_token():
            for block in self.blocks:
                x, weights = block(x, training=False, return_attention_scores=True)
                scores.append(weights)
        return scores

    def get_config(self) -> dict[str, Any]:
        # A JSON round trip turns Keras' tracked lists and dicts back into plain ones.
        return json.loads(json.dumps(self._own_config()))

    def _own_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": list(self.image_size),
            "patch_size": self.patch_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "hidden_dim": self.hidden_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "drop_path": self.drop_path,
            "qkv_bias": self.qkv_bias,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "pooling": self.pooling,
            "class_names": self.class_names,
            "preprocessing": self.preprocessing,
            "preset": self.preset,
            "stem_filters": self.stem_filters,
            "stem_strides": self.stem_strides,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
