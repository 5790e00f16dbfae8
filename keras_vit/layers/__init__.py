"""The Keras layers a Vision Transformer is made of, all built on ``keras.ops``."""

from keras_vit.layers.activations import gelu_erf
from keras_vit.layers.attention import MultiHeadSelfAttention
from keras_vit.layers.conv_stem import ConvStem
from keras_vit.layers.encoder_block import MLP, DropPath, TransformerEncoderBlock
from keras_vit.layers.patch_encoder import PatchEncoder
from keras_vit.layers.patches import PatchExtractor
from keras_vit.layers.pooling import TokenPooling

__all__ = [
    "ConvStem",
    "MLP",
    "DropPath",
    "MultiHeadSelfAttention",
    "PatchEncoder",
    "PatchExtractor",
    "TokenPooling",
    "TransformerEncoderBlock",
    "gelu_erf",
]
