"""Name maps: where each part of a :class:`~keras_vit.model.VisionTransformer` lives in a checkpoint format.

One :class:`CheckpointFormat` per format (timm state dicts, Google's Flax ``.npz``); the single loader in
:mod:`keras_vit.weights.loading` and :func:`~keras_vit.weights.reading.inspect_checkpoint` read them, as
keras-hub's ``convert_vit.py`` tables feed its ``preset_loader``. Adding a format is adding a table.

Each tensor of a block is named by the model part it fills (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``) and carries the file key (relative to the block prefix) and how
that entry is stored (:data:`NORM`, :data:`LINEAR`, :data:`DENSE`, :data:`HEADS_QKV`, :data:`HEADS_OUT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: A LayerNorm: ``key + scale_suffix`` (gamma) and ``key + bias_suffix`` (beta).
NORM = "norm"
#: A torch Linear: ``(out, in)`` weight, transposed to the Dense kernel ``(in, out)``.
LINEAR = "linear"
#: A Flax Dense: ``(in, out)`` kernel, as Keras stores it.
DENSE = "dense"
#: Flax attention's separate ``query/key/value`` kernels ``(D, H, d)`` (biases ``(H, d)``), concatenated.
HEADS_QKV = "heads_qkv"
#: Flax attention's output projection ``(H, d, D)`` (bias ``(D,)``), flattened to ``(D, D)``.
HEADS_OUT = "heads_out"

#: timm ViT variants keras-vit has no layers for, by a key that reveals them (checked first).
UNSUPPORTED_TIMM_FEATURES = {
    "fc_norm.": "average pooling with fc_norm (global_pool='avg')",
    "reg_token": "register tokens",
    "attn_pool.": "attention pooling (MAP head)",
    "norm_pre.": "a pre-encoder LayerNorm (norm_pre, CLIP style)",
    ".ls1.": "layer scale",
    ".q_norm.": "q/k normalisation",
    "patch_embed.norm.": "a normalised patch embedding",
}


@dataclass(frozen=True)
class CheckpointFormat:
    """Where a ViT's tensors are in one checkpoint format, and how they are stored.

    Attributes:
        name: the layout's name in reports and :class:`~keras_vit.weights.reading.Checkpoint`.
        cls_token, pos_embed: keys of the class token ``(1, 1, D)`` and positional embedding ``(1, T, D)``.
        patch_kernel: key of the patch-embedding convolution, stored ``patch_layout`` (``"OIHW"`` torch,
            ``"HWIO"`` Flax).
        patch_bias: key of its bias.
        block: prefix of block ``i`` (a ``str.format`` pattern).
        depth_key: a key, relative to ``block``, every block has (counts the blocks).
        block_tensors: model part -> (key relative to ``block``, storage kind), in loading order.
        norm: key of the final LayerNorm.
        norm_suffixes: LayerNorm ``(scale, bias)`` key suffixes.
        linear_suffixes: Linear/Dense ``(kernel, bias)`` key suffixes.
        head_kernel, head_bias: keys of the classifier; ``head_out_in``: kernel stored ``(classes, D)``.
        pre_logits: prefix of a representation layer before the head (dropped with a replaced head).
        unsupported: key fragment -> feature, for variants the model cannot express.
        stores_heads: whether the file's shapes tell the attention head count.
        depth_label: how a block-count mismatch names the blocks.
    """

    name: str
    cls_token: str
    pos_embed: str
    patch_kernel: str
    patch_layout: str
    patch_bias: str
    block: str
    depth_key: str
    block_tensors: dict[str, tuple[str, str]]
    norm: str
    norm_suffixes: tuple[str, str]
    linear_suffixes: tuple[str, str]
    head_kernel: str
    head_bias: str
    head_out_in: bool
    pre_logits: str
    unsupported: dict[str, str] = field(default_factory=dict)
    stores_heads: bool = False
    depth_label: str = ""

    def block_key(self, i: int, part: str, suffix: str = "") -> str:
        """The file key of ``part`` (a ``block_tensors`` name) of block ``i``, plus ``suffix``."""
        return self.block.format(i) + self.block_tensors[part][0] + suffix

    def depth_pattern(self) -> str:
        """``block + depth_key`` with ``{}`` for the block index."""
        return self.block + self.depth_key


TIMM = CheckpointFormat(
    name="timm",
    cls_token="cls_token",
    pos_embed="pos_embed",
    patch_kernel="patch_embed.proj.weight",
    patch_layout="OIHW",
    patch_bias="patch_embed.proj.bias",
    block="blocks.{}.",
    depth_key="norm1.weight",
    block_tensors={
        "norm1": ("norm1", NORM),
        "attn.qkv": ("attn.qkv", LINEAR),
        "attn.proj": ("attn.proj", LINEAR),
        "norm2": ("norm2", NORM),
        "mlp.fc1": ("mlp.fc1", LINEAR),
        "mlp.fc2": ("mlp.fc2", LINEAR),
    },
    norm="norm",
    norm_suffixes=(".weight", ".bias"),
    linear_suffixes=(".weight", ".bias"),
    head_kernel="head.weight",
    head_bias="head.bias",
    head_out_in=True,
    pre_logits="pre_logits.",
    unsupported=UNSUPPORTED_TIMM_FEATURES,
    depth_label="blocks.{i}.norm1.weight",
)

GOOGLE = CheckpointFormat(
    name="google",
    cls_token="cls",
    pos_embed="Transformer/posembed_input/pos_embedding",
    patch_kernel="embedding/kernel",
    patch_layout="HWIO",
    patch_bias="embedding/bias",
    block="Transformer/encoderblock_{}/",
    depth_key="LayerNorm_0/scale",
    block_tensors={
        "norm1": ("LayerNorm_0", NORM),
        "attn.qkv": ("MultiHeadDotProductAttention_1/", HEADS_QKV),
        "attn.proj": ("MultiHeadDotProductAttention_1/out", HEADS_OUT),
        "norm2": ("LayerNorm_2", NORM),
        "mlp.fc1": ("MlpBlock_3/Dense_0", DENSE),
        "mlp.fc2": ("MlpBlock_3/Dense_1", DENSE),
    },
    norm="Transformer/encoder_norm",
    norm_suffixes=("/scale", "/bias"),
    linear_suffixes=("/kernel", "/bias"),
    head_kernel="head/kernel",
    head_bias="head/bias",
    head_out_in=False,
    pre_logits="pre_logits/",
    stores_heads=True,
    depth_label="Transformer/encoderblock_{i}",
)

#: The formats by name, in the order :func:`~keras_vit.weights.reading.read_checkpoint` tries them.
FORMATS: dict[str, CheckpointFormat] = {"google": GOOGLE, "timm": TIMM}
#: Key prefixes of Google ``.npz`` files (the original releases, and ``opt/target/`` training states).
GOOGLE_PREFIXES = ("", "opt/target/")
