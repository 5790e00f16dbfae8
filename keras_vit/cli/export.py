"""``keras-vit export``: a ``.keras`` model to a verified ONNX, LiteRT, web or SavedModel export."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export options; :func:`run_export` turns them into one ``ExportOptions``."""
    parser.add_argument("model", help="the .keras file to export (saved under any Keras backend)")
    parser.add_argument("--format", default="onnx", help="onnx (default), saved_model, litert (.tflite) or web "
                        "(a static site running the model with onnxruntime-web)")
    parser.add_argument("--output", default=None,
                        help="output path (default beside MODEL: MODEL.onnx, MODEL.int8.onnx, MODEL.tflite, "
                        "MODEL_saved_model, MODEL_web)")
    parser.add_argument("--opset", default="17", help="ONNX opset, 13-18 (default 17)")
    parser.add_argument("--optimize", action="store_true",
                        help="ONNX: onnxruntime transformer fusions + offline graph optimisation (kept if not slower)")
    parser.add_argument("--portable", action="store_true",
                        help="ONNX: rewrite into standard ONNX ops only (opset 23 Attention), readable by any "
                        "runtime; implies --optimize")
    parser.add_argument("--quantize", default=None, metavar="MODE",
                        help="int8 (dynamic range: int8 weights), int8-static (full integer, calibrated), fp16, "
                        "int16x8 (LiteRT: int16 activations); which apply depends on --format")
    parser.add_argument("--webgpu", action="store_true",
                        help="web: also ship onnxruntime-web's WebGPU build (float models only; WASM stays the "
                        "default, the page offers WebGPU where the browser has it)")
    parser.add_argument("--calibration-data", default=None, metavar="NAME|FILE.npz",
                        help="images int8-static/int16x8 calibrate on (default: the verify images)")
    parser.add_argument("--verify-data", default=None, metavar="NAME|FILE.npz",
                        help="images to verify on: mnist, fashion_mnist, cifar10, usps, mnist_sample or an .npz "
                        "(default: the packaged MNIST sample, resized to the model)")
    parser.add_argument("--include-preprocessing", action="store_true",
                        help="put the scaling/normalisation in the graph: the input becomes raw uint8 pixels")
    parser.add_argument("--include-probabilities", action="store_true",
                        help="add a softmax output 'probabilities' beside 'logits'")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a .keras model to ONNX, LiteRT, a web page or SavedModel, verified against Keras",
        description="Export a .keras model to ONNX, LiteRT (.tflite), a static web page (onnxruntime-web) or a "
        "TensorFlow SavedModel. The file is checked against "
        "the Keras model on real images before it is written (max abs logit diff <= 1e-4; INT8: top-1 "
        "agreement >= 99%) and carries keras-vit metadata.",
    )
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run_export(args: argparse.Namespace):
    """Run the export the arguments describe; returns the ``ExportReport``."""
    from keras_vit.export import export
    from keras_vit.export.options import ExportOptions

    options = ExportOptions(
        format=args.format, opset=args.opset, include_preprocessing=args.include_preprocessing,
        include_probabilities=args.include_probabilities, optimize=args.optimize, quantize=args.quantize,
        verify_data=args.verify_data, portable=args.portable, calibration_data=args.calibration_data,
        webgpu=args.webgpu,
    ).checked()
    return export(args.model, args.output, options)


def run(args: argparse.Namespace) -> int:
    report = run_export(args)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(report.summary_lines()))
    return 0
