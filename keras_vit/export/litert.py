"""``export_litert``: a Keras ViT (or plain image classifier) to a verified LiteRT (``.tflite``) file with metadata.

Steps: prepare (load, describe, verify data, Keras logits) -> calibration images (calibrated modes) ->
convert with TensorFlow's ``TFLiteConverter``, builtin ops only (``TFLITE_BUILTINS``, plus
``TFLITE_BUILTINS_INT8`` / the int16x8 set for the calibrated modes; never ``SELECT_TF_OPS``) -> name the
tensors, add the signature and the keras-vit metadata (:mod:`.litert_ops`) -> write to a temporary name,
verify the written file with ``ai-edge-litert``'s interpreter, rename into place.

Verification: float files by max abs logit difference against Keras (<= ``options.tolerance``, at batch
sizes 17, 1 and the rest: the batch is dynamic); ``fp16`` and every INT8 mode by top-1 agreement with the
Keras model (>= 99 %) on the verify images, reported with the accuracy before and after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings

import numpy as np

from keras_vit.errors import KerasViTError, UserInputError
from keras_vit.export import tf_subprocess
from keras_vit.export.litert_graph import litert_concrete_function
from keras_vit.export.litert_ops import LiteRTRunner, finish_flatbuffer, not_builtin, operators
from keras_vit.export.options import CALIBRATED_QUANTIZATIONS, ExportOptions
from keras_vit.export.report import ExportReport, build_metadata
from keras_vit.export.source import (
    ModelDescription,
    check_model_path,
    default_output,
    is_path,
    prepare,
    serving_function,
)
from keras_vit.export.verify import (
    INT8_MIN_AGREEMENT,
    ExportVerificationError,
    accuracy,
    check_parity,
    keras_logits,
    load_calibration_data,
    max_abs_diff,
    split_batches,
    top1_agreement,
)
from keras_vit.io import atomic_output, check_output_folder

#: What each ``--quantize`` mode asks of the converter (reported as the quantisation's settings).
MODE_SETTINGS = {
    None: "float32",
    "fp16": "float16 weights (optimizations=[DEFAULT], supported_types=[float16])",
    "int8": "dynamic range: int8 weights, activations quantised at run time (optimizations=[DEFAULT])",
    "int8-static": "full integer: int8 weights and activations calibrated on images (TFLITE_BUILTINS_INT8), "
                   "float32 input and output",
    "int16x8": "int16 activations, int8 weights, calibrated on images, float32 input and output "
               "(LayerNorm's square root in float)",
}

# --------------------------------------------------------------------------------------------------
# Keras -> .tflite with TensorFlow's converter


def convert_to_litert(model, info: ModelDescription, options: ExportOptions,
                      calibration: np.ndarray | None = None) -> tuple[bytes, str, dict[str, str]]:
    """Convert ``model`` (TensorFlow backend) to ``.tflite`` bytes with builtin ops only.

    Returns ``(content, input_name, output_names)``: the converter's name of the input and a map of its
    output names to ``logits`` / ``probabilities``. ``calibration`` (the graph's input images) is the
    representative dataset of the calibrated modes. A model that would need Flex (select TensorFlow)
    or custom ops raises :class:`UserInputError` naming the ops and their layers.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise KerasViTError("LiteRT conversion needs the TensorFlow backend (use keras_vit.export.export).")
    import tensorflow as tf

    function, _ = serving_function(
        model, info, include_preprocessing=options.include_preprocessing,
        include_probabilities=options.include_probabilities, raw_input_dtype=options.input_dtype,
    )
    concrete = function.get_concrete_function()
    # Frozen and rewritten for LiteRT's kernels (litert_graph): no shape arithmetic on the dynamic batch.
    rewritten, _ = litert_concrete_function(concrete, int16_kernels=options.quantize == "int16x8")
    # No trackable object: that path freezes every variable (with one, resource variables stay in the file).
    with _quiet_converter():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([rewritten])
    ops = tf.lite.OpsSet
    converter.target_spec.supported_ops = [ops.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    quantize = options.quantize
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize in CALIBRATED_QUANTIZATIONS:
        if calibration is None or not len(calibration):
            raise UserInputError(f"--quantize {quantize} needs calibration images.")
        images = calibration

        def representative():
            for i in range(len(images)):
                yield [images[i : i + 1]]

        converter.representative_dataset = representative
        full = ops.TFLITE_BUILTINS_INT8 if quantize == "int8-static" else \
            ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        converter.target_spec.supported_ops = [full, ops.TFLITE_BUILTINS]
    try:
        with _quiet_converter():
            content = converter.convert()
    except Exception as err:
        raise _conversion_error(err, concrete) from None
    input_name = concrete.inputs[0].name.split(":")[0]
    output_names = {tensor.name.split(":")[0]: key for key, tensor in concrete.structured_outputs.items()}
    return bytes(content), input_name, output_names


@contextlib.contextmanager
def _quiet_converter():
    """Silence the converter's Python warnings: "consider providing the trackable_obj" (deliberate, see
    :func:`convert_to_litert`) and "Statistics for quantized inputs were expected" (float32 input)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        absl.setLevel(level)


def _conversion_error(err: Exception, concrete=None) -> KerasViTError:
    """A one-sentence error for a failed conversion; for missing builtins it names the ops and layers."""
    text = str(err)
    missing = sorted(set(re.findall(r"'tf\.([A-Z]\w*)' op is neither a custom op nor a flex op", text))
                     | set(re.findall(r"\btf\.([A-Z]\w*)\b[^\n]*(?:not supported|Flex)", text)))
    if missing:
        layers = _layers_using(concrete, missing)
        where = f" in layer {', '.join(layers)}" if layers else ""
        return UserInputError(
            f"the model needs TensorFlow op {', '.join(missing)}{where}, which LiteRT has no builtin for: "
            "keras-vit writes .tflite with builtin ops only (no Flex/select-TF ops); replace that op in the layer."
        )
    return KerasViTError(f"the LiteRT converter could not convert the model: {' '.join(text.split())[:300]}")


def _layers_using(concrete, op_types: list[str]) -> list[str]:
    """The layer scopes (``functional/my_layer``) of the graph's ops of ``op_types``, in graph order."""
    if concrete is None:
        return []
    layers: list[str] = []
    for op in concrete.graph.get_operations():
        if op.type in op_types:
            parts = op.name.split("/")
            layer = "/".join(parts[:-1]) or op.name
            if layer not in layers:
                layers.append(layer)
    return layers[:8]


# --------------------------------------------------------------------------------------------------
# The LiteRT pipeline


def export_litert(model_or_path, path: str | os.PathLike | None, options: ExportOptions) -> ExportReport:
    """Export ``model_or_path`` (a ``keras.Model`` or a ``.keras`` path) to a ``.tflite`` file at ``path``.

    The file has one input ``images`` (``[N, H, W, C]``, N dynamic: shape signature ``-1``), outputs
    ``logits`` (and ``probabilities``) under the ``serving_default`` signature, builtin ops only, and the
    keras-vit metadata in its metadata map (:func:`keras_vit.export.read_metadata` reads it). It is
    written only after the file itself ran in LiteRT and matched Keras. ``path`` defaults to
    ``MODEL.tflite`` (``MODEL.int8-static.tflite``, ...) beside a ``.keras`` path. Under JAX or PyTorch
    the conversion runs in a TensorFlow subprocess.

    Raises :class:`~keras_vit.errors.UserInputError` (exit 2) for bad input and
    :class:`~keras_vit.export.verify.ExportVerificationError` (exit 1) when the file would not match.
    """
    start = time.perf_counter()
    options = options.checked()
    quantize = options.quantize
    check_model_path(model_or_path)
    output = check_output_folder(path if path is not None else default_output(model_or_path, "litert", quantize))
    if tf_subprocess.needs_subprocess():
        check = None if is_path(model_or_path) or quantize else tf_subprocess.source_check(
            model_or_path, options, lambda path, feed: LiteRTRunner(path).run(feed)["logits"])
        report = tf_subprocess.export_in_subprocess(model_or_path, output, options, check=check)
        report.seconds = time.perf_counter() - start
        return report

    prepared = prepare(model_or_path, options.verify_data, options.verify_limit)
    info, data = prepared.info, prepared.data
    feed = prepared.feed(options.include_preprocessing, options.input_dtype)
    calibration = None
    if quantize in CALIBRATED_QUANTIZATIONS:
        calibration = load_calibration_data(options.calibration_data, data, info.image_size, info.channels,
                                            info.preprocessing, options.calibration_limit)
    content, input_name, output_names = convert_to_litert(
        prepared.model, info, options,
        None if calibration is None else calibration.feed(options.include_preprocessing, options.input_dtype),
    )
    metadata = build_metadata(info, export_format="litert", opset=None,
                              include_preprocessing=options.include_preprocessing,
                              input_dtype=options.input_dtype, outputs=options.outputs)
    content = finish_flatbuffer(content, input_name, output_names, metadata)
    ops = operators(content)
    if not_builtin(ops):
        raise UserInputError(f"the converted model uses non-builtin operators {', '.join(not_builtin(ops))}: "
                             "keras-vit exports .tflite with builtin ops only.")
    parity = quantization = None
    with atomic_output(output) as temporary:
        temporary.write_bytes(content)
        runner = LiteRTRunner(temporary)
        if sorted(runner.output_names) != sorted(options.outputs):
            raise KerasViTError(f"the written .tflite has outputs {runner.output_names}, expected "
                                f"{list(options.outputs)}.")
        if quantize is None:
            parity = _float_parity(runner, feed[prepared.parity_index], prepared.reference, options.tolerance)
        else:
            quantization = _agreement(runner, prepared, feed, quantize)
            quantization["calibration"] = None if calibration is None else calibration.description
        size = temporary.stat().st_size
    if quantization is not None:
        quantization["size_after"] = size
    return ExportReport(
        format="litert", path=str(output), metadata=metadata, inputs=["images"], outputs=list(options.outputs),
        file_size=size, seconds=time.perf_counter() - start, verify_data=data.description, parity=parity,
        quantization=quantization, warnings=list(info.warnings), operators=ops,
    )


def _float_parity(runner: LiteRTRunner, feed: np.ndarray, reference: np.ndarray, tolerance: float) -> dict:
    """:func:`~keras_vit.export.verify.check_parity` at batch sizes 17, 1, rest, plus the diff relative to the
    logit scale."""
    bounds = split_batches(len(feed))
    result = check_parity(runner.run(feed, bounds), reference, bounds, tolerance)
    scale = float(np.max(np.abs(reference)))
    return {**result, "relative_diff": result["max_abs_diff"] / max(scale, 1e-12), "logit_scale": scale}


def _agreement(runner: LiteRTRunner, prepared, feed: np.ndarray, quantize: str) -> dict:
    """Top-1 agreement of a quantised file with the Keras model on every verify image (>= 99 %)."""
    data = prepared.data
    reference = keras_logits(prepared.model, data.inputs)
    logits = runner.run(feed, split_batches(len(feed)))["logits"]
    agreement = top1_agreement(logits, reference)
    result = {
        "mode": quantize, "settings": MODE_SETTINGS[quantize], "agreement": agreement,
        "min_agreement": INT8_MIN_AGREEMENT, "samples": int(len(feed)),
        "accuracy_before": accuracy(reference, data.labels), "accuracy_after": accuracy(logits, data.labels),
        "max_abs_diff": max_abs_diff(logits, reference),
    }
    if agreement < INT8_MIN_AGREEMENT:
        raise ExportVerificationError(
            f"{quantize} export agrees with the float model on only {agreement:.1%} of top-1 predictions "
            f"({len(feed)} images; at least {INT8_MIN_AGREEMENT:.0%} needed)"
        )
    return result
