"""Multi-head self-attention with a fused q/k/v projection (timm's ``attn.qkv`` / ``attn.proj``)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vit")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Scaled dot-product self-attention over tokens ``(B, T, D)``.

    One ``qkv`` Dense produces queries, keys and values for all heads (``D -> 3D``, ordered
    ``[q | k | v]``, each ``[head_0 | head_1 | ...]`` as timm orders them), attention is
    ``softmax(q k^T / sqrt(d))`` per head, and ``proj`` maps the concatenated heads back to ``D``.

    Called with ``query_tokens=n``, only the first ``n`` tokens attend (their outputs, ``(B, n, D)``,
    are returned) while keys and values still cover every token: the same numbers for those rows at a
    fraction of the cost, which is all a classifier reading the class token needs of the last block.

    Args:
        num_heads: number of attention heads; must divide the token width.
        qkv_bias: add a bias to the q/k/v projection.
        attention_dropout: dropout on the attention weights.
        dropout: dropout on the output projection.
    """

    def __init__(
        self,
        num_heads: int,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout_rate = float(attention_dropout)
        self.dropout_rate = float(dropout)
        self.attention_dropout = keras.layers.Dropout(attention_dropout, dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"Token width {dim} is not divisible by num_heads={self.num_heads}.")
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(3 * dim, use_bias=self.qkv_bias, name="qkv", dtype=self.dtype_policy)
        self.proj = keras.layers.Dense(dim, name="proj", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        self.built = True

    def call(self, tokens, training=None, return_attention_scores=False, query_tokens=None):
        length, dim = tokens.shape[1], tokens.shape[2]
        if length is None:
            length = ops.shape(tokens)[1]
        qkv = ops.reshape(self.qkv(tokens), (-1, length, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        query, key, value = qkv[0], qkv[1], qkv[2]
        if query_tokens is not None:
            query, length = query[:, :, :query_tokens], query_tokens
        scores = ops.matmul(query * self.scale, ops.transpose(key, (0, 1, 3, 2)))
        weights = ops.softmax(scores, axis=-1)
        context = ops.matmul(self.attention_dropout(weights, training=training), value)
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (-1, length, dim))
        output = self.output_dropout(self.proj(context), training=training)
        if return_attention_scores:
            return output, weights
        return output

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "qkv_bias": self.qkv_bias,
            "attention_dropout": self.attention_dropout_rate,
            "dropout": self.dropout_rate,
        }
