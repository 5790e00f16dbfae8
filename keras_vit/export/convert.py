"""Keras model -> ONNX ``ModelProto`` with tf2onnx, under the TensorFlow backend.

This is only the conversion: the graph comes out as tf2onnx writes it (its own optimisers applied),
with inputs ``["images"]`` and outputs ``["logits"(, "probabilities")]``. Graph rewrites, fusion and
quantisation are later, separate steps (:mod:`keras_vit.export.optimize`, :mod:`.quantize`).
"""

from __future__ import annotations

import contextlib
import logging

from keras_vit.errors import KerasViTError, UserInputError
from keras_vit.export.model_info import ModelDescription
from keras_vit.export.signature import serving_function

DEFAULT_OPSET = 17
#: Opsets this pipeline converts to and checks (tf2onnx 1.17 writes up to 18; 17 adds LayerNormalization).
SUPPORTED_OPSETS = tuple(range(13, 19))


def check_opset(opset: int) -> int:
    """``opset`` as an int, or :class:`UserInputError` naming the supported ones."""
    try:
        value = int(opset)
    except (TypeError, ValueError):
        value = None
    if value not in SUPPORTED_OPSETS:
        raise UserInputError(
            f"unsupported ONNX opset {opset!r}: supported opsets are "
            f"{SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]} (default {DEFAULT_OPSET})."
        )
    return value


def convert_to_onnx(
    model,
    info: ModelDescription,
    *,
    opset: int = DEFAULT_OPSET,
    include_preprocessing: bool = False,
    include_probabilities: bool = False,
    raw_input_dtype: str = "uint8",
):
    """Convert ``model`` to an ``onnx.ModelProto`` (requires the TensorFlow backend)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise KerasViTError("ONNX conversion needs the TensorFlow backend (use keras_vit.export.to_onnx).")
    opset = check_opset(opset)
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    function, spec = serving_function(
        model, info, include_preprocessing=include_preprocessing,
        include_probabilities=include_probabilities, raw_input_dtype=raw_input_dtype,
    )
    # The full last block: the fusion recognises its attention and prunes it to the class token itself.
    every_token = model.every_token() if hasattr(model, "every_token") else contextlib.nullcontext()
    try:
        with every_token:
            model_proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    except KerasViTError:
        raise
    except Exception as err:
        raise KerasViTError(f"tf2onnx could not convert the model: {' '.join(str(err).split())[:300]}") from None
    model_proto.doc_string = f"{info.name} exported by keras-vit"
    return model_proto
