"""``to_saved_model``: a Keras ViT to a verified TensorFlow SavedModel directory with metadata beside it.

The SavedModel is written by Keras' own ``keras.export.ExportArchive`` (what ``model.export(...,
format="tf_saved_model")`` uses) with one endpoint ``serve``, also the ``serving_default`` signature:
input ``images`` ``[N, H, W, C]``, outputs ``logits`` (and ``probabilities``). The metadata is the JSON
file ``keras_vit_metadata.json`` inside the directory. The directory is built under a temporary name
beside the destination, verified with ``tf.saved_model.load``, then swapped in.
"""

from __future__ import annotations

import os
import time

from keras_vit.export import tf_subprocess
from keras_vit.export.options import ExportOptions
from keras_vit.export.report import ExportReport, build_metadata, write_saved_model_metadata
from keras_vit.export.source import (
    check_model_path,
    default_output,
    prepare,
    serving_function,
)
from keras_vit.export.verify import (
    PARITY_TOLERANCE,
    max_abs_diff,
    require_parity,
    saved_model_outputs,
    split_batches,
)
from keras_vit.io import atomic_output, check_output_folder
from keras_vit.preprocessing import softmax


def to_saved_model(
    model_or_path,
    path: str | os.PathLike | None = None,
    include_preprocessing: bool = False,
    verify_data: str | os.PathLike | None = None,
    include_probabilities: bool = False,
    raw_input_dtype: str = "uint8",
    verify_limit: int = 1000,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export ``model_or_path`` (a ``keras.Model`` or ``.keras`` path) as a SavedModel directory.

    ``path`` defaults to ``MODEL_saved_model`` beside a ``.keras`` path. The directory is written only
    after its ``serving_default`` matched the Keras model on real images (max abs logit diff <=
    ``tolerance``). Under JAX or PyTorch the export runs in a TensorFlow subprocess.
    """
    options = ExportOptions(
        format="saved_model", include_preprocessing=include_preprocessing, verify_data=verify_data,
        include_probabilities=include_probabilities, raw_input_dtype=raw_input_dtype,
        verify_limit=verify_limit, tolerance=tolerance,
    )
    return export_saved_model(model_or_path, path, options)


def export_saved_model(model_or_path, path: str | os.PathLike | None, options: ExportOptions) -> ExportReport:
    """:func:`to_saved_model` with its options as one :class:`~keras_vit.export.options.ExportOptions`."""
    start = time.perf_counter()
    options = options.checked()
    include_preprocessing, input_dtype = options.include_preprocessing, options.input_dtype
    tolerance = options.tolerance
    check_model_path(model_or_path)
    output = check_output_folder(path if path is not None else default_output(model_or_path, "saved_model"))
    if tf_subprocess.needs_subprocess():
        report = tf_subprocess.export_in_subprocess(model_or_path, output, options)
        report.seconds = time.perf_counter() - start
        return report

    import keras

    prepared = prepare(model_or_path, options.verify_data, options.verify_limit)
    info = prepared.info
    outputs = options.outputs
    feed = prepared.feed(include_preprocessing, input_dtype)[prepared.parity_index]
    function, _ = serving_function(prepared.model, info, include_preprocessing=include_preprocessing,
                                   include_probabilities=options.include_probabilities, raw_input_dtype=input_dtype)
    metadata = build_metadata(info, export_format="saved_model", opset=None,
                              include_preprocessing=include_preprocessing, input_dtype=input_dtype, outputs=outputs)
    with atomic_output(output, directory=True) as temporary:
        archive = keras.export.ExportArchive()
        archive.track(prepared.model)
        archive.add_endpoint("serve", function)
        archive.write_out(str(temporary), verbose=False)
        write_saved_model_metadata(temporary, metadata)
        results = saved_model_outputs(temporary, feed)
        if sorted(results) != sorted(outputs):
            from keras_vit.errors import KerasViTError

            raise KerasViTError(f"the SavedModel's outputs are {sorted(results)}, expected {list(outputs)}.")
        parity = {
            "max_abs_diff": max_abs_diff(results["logits"], prepared.reference),
            "samples": int(len(feed)),
            "batch_sizes": [b - a for a, b in split_batches(len(feed))],
            "tolerance": tolerance,
        }
        if "probabilities" in results:
            parity["probabilities_max_abs_diff"] = max_abs_diff(results["probabilities"], softmax(prepared.reference))
        require_parity(parity["max_abs_diff"], tolerance)
        require_parity(parity.get("probabilities_max_abs_diff", 0.0), tolerance)
        size = sum(f.stat().st_size for f in temporary.rglob("*") if f.is_file())
    return ExportReport(
        format="saved_model", path=str(output), metadata=metadata, inputs=["images"], outputs=list(outputs),
        file_size=size, seconds=time.perf_counter() - start, verify_data=prepared.data.description,
        parity=parity, warnings=list(info.warnings),
    )
