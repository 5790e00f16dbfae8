"""The serving function both exporters convert: ``images`` in, ``logits`` (and ``probabilities``) out.

Runs under the TensorFlow backend only. With ``include_preprocessing`` the function takes raw pixels
(``uint8`` by default) and applies ``(raw * scale - mean) / std`` per channel before the model, in
float32, exactly as :func:`keras_vit.preprocessing.preprocess` does in numpy.
"""

from __future__ import annotations

from keras_vit.export.model_info import ModelDescription

#: Dtypes accepted for raw-pixel inputs when preprocessing is inside the graph.
RAW_INPUT_DTYPES = ("uint8", "float32")


def input_dtype_for(include_preprocessing: bool, raw_input_dtype: str = "uint8") -> str:
    """The dtype of the exported ``images`` input."""
    from keras_vit.errors import UserInputError

    if not include_preprocessing:
        return "float32"
    if raw_input_dtype not in RAW_INPUT_DTYPES:
        raise UserInputError(f"raw input dtype must be one of {', '.join(RAW_INPUT_DTYPES)}, got {raw_input_dtype!r}.")
    return raw_input_dtype


def output_names(include_probabilities: bool) -> tuple[str, ...]:
    """Names of the exported outputs, in order."""
    return ("logits", "probabilities") if include_probabilities else ("logits",)


def serving_function(
    model,
    info: ModelDescription,
    *,
    include_preprocessing: bool = False,
    include_probabilities: bool = False,
    raw_input_dtype: str = "uint8",
):
    """A ``tf.function`` with input signature ``TensorSpec([None, H, W, C], dtype, name="images")``.

    Returns ``(function, input_signature)``; the function returns a dict ``{"logits": ...}`` (plus
    ``"probabilities"``, the softmax of the logits, when asked), which names the graph outputs.
    """
    import tensorflow as tf

    from keras_vit.preprocessing import channel_constants, normalize

    dtype = input_dtype_for(include_preprocessing, raw_input_dtype)
    height, width = info.image_size
    spec = (tf.TensorSpec([None, height, width, info.channels], tf.as_dtype(dtype), name="images"),)
    scale, mean, std = channel_constants(info.preprocessing, info.channels)

    @tf.function(input_signature=spec, autograph=False)
    def serve(images):
        x = images
        if include_preprocessing:
            x = normalize(tf.cast(x, tf.float32), scale, mean, std)
        logits = tf.cast(model(x, training=False), tf.float32)
        outputs = {"logits": tf.identity(logits, name="logits")}
        if include_probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1, name="probabilities")
        return outputs

    return serve, spec
