"""``to_onnx``: a Keras ViT (or plain image classifier) to a verified ONNX file with metadata.

Steps: prepare (load, describe, verify data, Keras logits) -> convert (tf2onnx) -> check inputs/outputs
and parity -> optimize (optional) -> quantize (optional; both in :mod:`.optimize`) -> metadata -> write to a
temporary name, verify the written file again, rename into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from keras_vit.errors import KerasViTError
from keras_vit.export import tf_subprocess
from keras_vit.export.options import DEFAULT_OPSET, ExportOptions, check_opset
from keras_vit.export.report import ExportReport, build_metadata, readable_by, set_onnx_metadata
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
    PARITY_TOLERANCE,
    ExportVerificationError,
    check_graph_io,
    load_calibration_data,
    onnx_parity,
    ort_session,
    run_onnx,
    top1_agreement,
)
from keras_vit.io import atomic_output, check_output_folder

# --------------------------------------------------------------------------------------------------
# Keras -> ONNX with tf2onnx


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


# --------------------------------------------------------------------------------------------------
# The ONNX pipeline


def to_onnx(
    model_or_path,
    path: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    include_preprocessing: bool = False,
    optimize: bool = False,
    quantize: str | None = None,
    verify_data: str | os.PathLike | None = None,
    include_probabilities: bool = False,
    raw_input_dtype: str = "uint8",
    verify_limit: int = 1000,
    tolerance: float = PARITY_TOLERANCE,
    portable: bool = False,
    calibration_data: str | os.PathLike | None = None,
) -> ExportReport:
    """Export ``model_or_path`` (a ``keras.Model`` or a ``.keras`` path) to ONNX at ``path``.

    The file has one input ``images`` (``[N, H, W, C]``, float32; raw pixels of ``raw_input_dtype``
    with ``include_preprocessing``), output ``logits`` (and ``probabilities``), and keras-vit metadata
    (:mod:`keras_vit.export.report`). It is written only after it matched the Keras model on real
    images (max abs logit diff <= ``tolerance``; for ``quantize`` ``"int8"`` / ``"int8-static"`` top-1
    agreement >= 99 % with the float graph, ``"fp16"`` >= 99.5 %). ``portable`` (implies ``optimize``)
    writes standard ONNX ops only (opset 23) instead of onnxruntime's fused ones; ``calibration_data``
    names the images ``int8-static`` calibrates on (default: the verify images).
    ``path`` defaults to ``MODEL.onnx`` (``MODEL.int8.onnx``, ``MODEL.portable.onnx``) beside a ``.keras``
    path. Works from any Keras backend: under JAX or PyTorch the conversion runs in a TensorFlow subprocess.

    Raises :class:`~keras_vit.errors.UserInputError` (exit 2) for bad input and
    :class:`~keras_vit.export.verify.ExportVerificationError` (exit 1) when the file would not match.
    """
    options = ExportOptions(
        format="onnx", opset=opset, include_preprocessing=include_preprocessing, optimize=optimize,
        quantize=quantize, verify_data=verify_data, include_probabilities=include_probabilities,
        raw_input_dtype=raw_input_dtype, verify_limit=verify_limit, tolerance=tolerance, portable=portable,
        calibration_data=calibration_data,
    )
    return export_onnx(model_or_path, path, options)


def export_onnx(model_or_path, path: str | os.PathLike | None, options: ExportOptions) -> ExportReport:
    """:func:`to_onnx` with its options as one :class:`~keras_vit.export.options.ExportOptions`."""
    start = time.perf_counter()
    options = options.checked()
    opset, quantize, tolerance = options.opset, options.quantize, options.tolerance
    include_preprocessing, input_dtype = options.include_preprocessing, options.input_dtype
    check_model_path(model_or_path)
    tag = ".".join(part for part in ("portable" if options.portable else "", quantize or "") if part) or None
    output = check_output_folder(path if path is not None else default_output(model_or_path, "onnx", tag))
    if tf_subprocess.needs_subprocess():
        check = None if is_path(model_or_path) or quantize else tf_subprocess.source_check(
            model_or_path, options, lambda path, feed: run_onnx(ort_session(path), feed)["logits"])
        report = tf_subprocess.export_in_subprocess(model_or_path, output, options, check=check)
        report.seconds = time.perf_counter() - start
        return report

    prepared = prepare(model_or_path, options.verify_data, options.verify_limit)
    info, data = prepared.info, prepared.data
    outputs = options.outputs
    feed = prepared.feed(include_preprocessing, input_dtype)
    parity_feed = feed[prepared.parity_index]

    proto = convert_to_onnx(prepared.model, info, opset=opset, include_preprocessing=include_preprocessing,
                            include_probabilities=options.include_probabilities, raw_input_dtype=input_dtype)
    check_graph_io(proto, outputs)
    float_parity = onnx_parity(ort_session(proto.SerializeToString()), parity_feed, prepared.reference, tolerance)

    optimization = None
    if options.optimize:
        from keras_vit.export.optimize import choose_graph, optimize_graph, portable_graph

        candidate = portable_graph(proto) if options.portable else optimize_graph(proto, info)
        proto, optimization = choose_graph(proto, candidate, parity_feed, prepared.reference)
        check_graph_io(proto, outputs)
        if optimization["kept"] == "optimized":
            float_parity["max_abs_diff"] = optimization["max_abs_diff"]

    quantization, float_logits = None, None
    if quantize:
        float_logits = run_onnx(ort_session(proto.SerializeToString()), feed)["logits"]
        proto, quantization = _quantize(proto, quantize, options, prepared, feed, float_logits)
        quantization["float_max_abs_diff"] = float_parity["max_abs_diff"]

    written_opset = onnx_opset(proto)
    metadata = build_metadata(info, export_format="onnx", opset=written_opset,
                              include_preprocessing=include_preprocessing, input_dtype=input_dtype, outputs=outputs)
    set_onnx_metadata(proto, metadata)
    parity = None
    with atomic_output(output) as temporary:
        _write(proto, temporary)
        min_agreement = quantization["min_agreement"] if quantization else None
        parity = _verify_file(temporary, outputs, parity_feed, prepared.reference, feed, float_logits, tolerance,
                              min_agreement)
        size = temporary.stat().st_size
        if quantization is not None:
            quantization.update(agreement=parity.pop("agreement"), size_after=size)
            parity = None
    return ExportReport(
        format="onnx", path=str(output), metadata=metadata, inputs=["images"], outputs=list(outputs),
        file_size=size, seconds=time.perf_counter() - start, verify_data=data.description, parity=parity,
        optimization=optimization, quantization=quantization, warnings=list(info.warnings),
        runtimes=readable_by(proto),
    )


def _quantize(proto, quantize: str, options: ExportOptions, prepared, feed, float_logits):
    """The ``--quantize`` step: ``(quantized_proto, report)`` (:mod:`.optimize` for int8, :mod:`.quantize`)."""
    labels = prepared.data.labels
    if quantize == "int8":
        from keras_vit.export.optimize import quantize_int8

        proto, report = quantize_int8(proto, feed, float_logits, labels)
        report["mode"] = "int8"
        return proto, report
    if quantize == "fp16":
        from keras_vit.export.quantize import quantize_fp16

        return quantize_fp16(proto, feed, float_logits, labels)
    from keras_vit.export.quantize import quantize_int8_static

    info = prepared.info
    calibration = load_calibration_data(options.calibration_data, prepared.data, info.image_size, info.channels,
                                        info.preprocessing, options.calibration_limit)
    return quantize_int8_static(proto, calibration.feed(options.include_preprocessing, options.input_dtype), feed,
                                float_logits, labels, calibration_description=calibration.description)


def onnx_opset(model_proto) -> int:
    """The default-domain opset ``model_proto`` imports."""
    return next((int(o.version) for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _write(proto, path: Path) -> None:
    import onnx

    onnx.save(proto, str(path))


def _verify_file(path: Path, outputs, parity_feed, reference, feed, float_logits, tolerance,
                 min_agreement: float | None = None) -> dict:
    """Check the written file itself: it loads, has the right inputs/outputs, and matches.

    A quantised file (``float_logits`` given) must agree with the float graph on >= ``min_agreement``.
    """
    import onnx

    check_graph_io(onnx.load(str(path)), outputs)
    session = ort_session(path)
    if float_logits is None:
        return onnx_parity(session, parity_feed, reference, tolerance)
    agreement = top1_agreement(run_onnx(session, feed)["logits"], float_logits)
    min_agreement = INT8_MIN_AGREEMENT if min_agreement is None else min_agreement
    if agreement < min_agreement:
        raise ExportVerificationError(
            f"the quantized export agrees with the float model on only {agreement:.1%} of top-1 predictions "
            f"(< {min_agreement:.1%})"
        )
    run_onnx(session, feed[: sum((17, 1))], [(0, 17), (17, 18)])  # dynamic batch: 17 and 1
    return {"agreement": agreement}
