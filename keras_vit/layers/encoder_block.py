"""The pre-norm transformer encoder block and its MLP."""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from keras_vit.layers.activations import gelu_erf
from keras_vit.layers.attention import MultiHeadSelfAttention


@keras.saving.register_keras_serializable(package="keras_vit")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drop a whole residual branch per sample, scaling survivors by ``1/keep``."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x * mask / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_vit")
class MLP(keras.layers.Layer):
    """``Dense(mlp_dim) -> GELU (exact) -> Dropout -> Dense(D) -> Dropout`` (timm's ``mlp.fc1/fc2``)."""

    def __init__(self, mlp_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1 = keras.layers.Dense(self.mlp_dim, name="fc1", dtype=self.dtype_policy)
        self.fc2 = keras.layers.Dense(input_shape[-1], name="fc2", dtype=self.dtype_policy)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        self.built = True

    def call(self, x, training=None):
        x = self.dropout(gelu_erf(self.fc1(x)), training=training)
        return self.dropout(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mlp_dim": self.mlp_dim, "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="keras_vit")
class TransformerEncoderBlock(keras.layers.Layer):
    """Pre-norm block: ``x + DropPath(MHSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``.

    Args:
        num_heads: attention heads.
        mlp_dim: hidden width of the MLP.
        dropout: dropout after attention and inside the MLP.
        attention_dropout: dropout on attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        qkv_bias: bias on the q/k/v projection.
        layer_norm_epsilon: LayerNorm epsilon (timm's ViTs use 1e-6).
        class_token_only: output the class token (token 0) alone, ``(B, 1, D)``: only it attends,
            and the residuals and MLP run on its row, while keys and values still come from every
            token. Exact for that row and several times cheaper; the model sets it on its last block
            when the classifier reads the class token. :meth:`every_token` turns it off for a while.
    """

    def __init__(
        self,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        layer_norm_epsilon: float = 1e-6,
        class_token_only: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.class_token_only = bool(class_token_only)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout)
        self.attention_dropout_rate = float(attention_dropout)
        self.drop_path_rate = float(drop_path)
        self.qkv_bias = bool(qkv_bias)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm1", dtype=policy)
        self.attn = MultiHeadSelfAttention(
            num_heads, qkv_bias=qkv_bias, attention_dropout=attention_dropout, dropout=dropout,
            name="attn", dtype=policy,
        )
        self.norm2 = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="norm2", dtype=policy)
        self.mlp = MLP(mlp_dim, dropout=dropout, name="mlp", dtype=policy)
        self.drop_path = DropPath(drop_path, dtype=policy)

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None, return_attention_scores=False):
        queries = 1 if self.class_token_only else None
        attended = self.attn(self.norm1(x), training=training, return_attention_scores=return_attention_scores,
                             query_tokens=queries)
        if return_attention_scores:
            attended, scores = attended
        if queries is not None:
            x = x[:, :queries]
        x = x + self.drop_path(attended, training=training)
        x = x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)
        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        if self.class_token_only:
            return (input_shape[0], 1, *input_shape[2:])
        return input_shape

    @contextlib.contextmanager
    def every_token(self):
        """Within this context the block outputs every token, whatever ``class_token_only`` says."""
        saved, self.class_token_only = self.class_token_only, False
        try:
            yield self
        finally:
            self.class_token_only = saved

    def get_config(self):
        return {
            **super().get_config(),
            "class_token_only": self.class_token_only,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout_rate,
            "attention_dropout": self.attention_dropout_rate,
            "drop_path": self.drop_path_rate,
            "qkv_bias": self.qkv_bias,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }
