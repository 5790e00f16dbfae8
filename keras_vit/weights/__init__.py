"""Pretrained weights: load timm and Google (Flax ``.npz``) ViT checkpoints into keras-vit models, exactly.

Two checkpoint layouts are understood, whatever file holds them:

- **timm** state dicts (``.safetensors``, ``.pth``/``.pt``/``.bin`` from ``torch.save``, or a dict of
  arrays/tensors): ``cls_token``, ``pos_embed``, ``patch_embed.proj.{weight,bias}``,
  ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``, ``head.*``.
- **Google** ``.npz`` files of the original ViT / AugReg releases: ``embedding/*``, ``cls``,
  ``Transformer/posembed_input/pos_embedding``, ``Transformer/encoderblock_{i}/...``,
  ``Transformer/encoder_norm/*``, ``head/*`` (optionally ``pre_logits/*``), with or without the
  ``opt/target/`` prefix.

The mapping onto :class:`~keras_vit.model.VisionTransformer` (patch convolution to Dense kernel, fused or
separate q/k/v, transposed Linear weights) is described in :mod:`~keras_vit.weights.loading`. Everything is
validated before anything is assigned: a missing, mis-shaped or unsupported key raises
:class:`~keras_vit.errors.UserInputError` naming the first such key, and the model is left untouched.

Two adaptations are deliberate and reported in the returned :class:`LoadReport`:

- **positional embedding of another grid** (a checkpoint for 224 px loaded into a 160 px model):
  resized with :func:`keras_vit.posembed.resample_position_embedding`: bicubic, class-token row
  kept, ``antialias=True`` by default, which is what ``timm.layers.resample_abs_pos_embed`` and timm's
  own checkpoint loading use;
- **head of another size** (or none in the checkpoint): the new head's kernel and bias are zeros.
  That is the initialisation of Google's ViT fine-tuning code and of timm's ``weight_init="jax"``
  (timm's default init instead draws the new head from a truncated normal, std 0.02); the first
  gradient steps then train the head alone, which keeps the pretrained features intact.

Normalisation: the model's ``preprocessing`` records what the checkpoint expects (see
:func:`checkpoint_preprocessing`).

Modules: :mod:`~keras_vit.weights.tables` (one name map per format), :mod:`~keras_vit.weights.reading`
(files, layout, architecture, normalisation), :mod:`~keras_vit.weights.loading` (the one loader),
:mod:`~keras_vit.weights.building` (models from checkpoints), :mod:`~keras_vit.weights.hub` (pretrained
checkpoints by name, through the Hugging Face Hub's cache).
"""

from keras_vit.weights.building import (
    HEADS_BY_WIDTH,
    convert_checkpoint,
    from_checkpoint,
    load_initial_model,
)
from keras_vit.weights.hub import (
    PRETRAINED,
    PretrainedWeights,
    convert_pretrained,
    is_pretrained_name,
    list_pretrained,
    load_pretrained,
)
from keras_vit.weights.loading import (
    LoadReport,
    load_checkpoint,
    load_google_npz,
    load_timm,
    to_timm_state_dict,
)
from keras_vit.weights.reading import (
    IMAGENET_MEAN_STD,
    IMAGENET_NORMALISED_FAMILIES,
    INCEPTION_MEAN_STD,
    Checkpoint,
    CheckpointArchitecture,
    checkpoint_preprocessing,
    inspect_checkpoint,
    read_checkpoint,
)
from keras_vit.weights.tables import FORMATS, GOOGLE, GOOGLE_PREFIXES, TIMM, UNSUPPORTED_TIMM_FEATURES, CheckpointFormat

__all__ = [
    "FORMATS",
    "GOOGLE",
    "GOOGLE_PREFIXES",
    "HEADS_BY_WIDTH",
    "IMAGENET_MEAN_STD",
    "IMAGENET_NORMALISED_FAMILIES",
    "INCEPTION_MEAN_STD",
    "TIMM",
    "UNSUPPORTED_TIMM_FEATURES",
    "Checkpoint",
    "CheckpointArchitecture",
    "CheckpointFormat",
    "LoadReport",
    "PRETRAINED",
    "PretrainedWeights",
    "convert_pretrained",
    "is_pretrained_name",
    "list_pretrained",
    "load_pretrained",
    "checkpoint_preprocessing",
    "convert_checkpoint",
    "from_checkpoint",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_google_npz",
    "load_initial_model",
    "load_timm",
    "read_checkpoint",
    "to_timm_state_dict",
]
