"""What the input pipeline costs ``keras_vit.training.fit``: epoch time with augmentation against without.

A model too small to hide the input cost (``vit_mnist`` at hidden 16, depth 1) is trained on full MNIST
by :func:`keras_vit.training.fit`; the figure is the median epoch time after the first (compiling) epoch,
for ``augment="none"`` and ``"digits"``, and the ratio none/digits (1.0: augmentation is free). Each
configuration runs in its own process so that TensorFlow can be hidden (``--block-tensorflow``: as on a
machine where it is not installed) and backends do not share a process.

    python -m benchmarks.gpu_input_pipeline --backends jax torch tensorflow --pipelines pydataset device \\
        --block-tensorflow --epochs 3

``--pipelines``: ``device`` (augmentation and normalisation on the device, in the train step), ``auto``, ``tf.data`` or
``pydataset`` (the host-side pipelines that did both before). Prints one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

#: Makes ``import tensorflow`` fail in a process, as where it is not installed. (``sys.modules["tensorflow"] =
#: None`` is not the same: Keras takes a ``"tensorflow" in sys.modules`` as TensorFlow being there.)
BLOCK_TENSORFLOW = '''
import importlib.abc
import importlib.machinery
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import tensorflow` fails, as when it is not installed. find_spec answers a spec without an origin
    (torch._dynamo probes find_spec("tensorflow") and skips such modules) whose loading raises."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)", name=spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _NoTensorFlow())
'''

CHILD = """
{prelude}
import json, keras, keras_vit
from keras_vit.datasets import load_dataset
from keras_vit.training import TrainConfig, fit, set_seed
set_seed(0)
model = keras_vit.create_model("{preset}", hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)
config = TrainConfig(epochs={epochs}, batch_size={batch}, augment="{augment}", pipeline="{pipeline}", verbose=0,
                     checkpoints=False, validation_split=0.1, seed=0)
import sys
record = fit(model, load_dataset("{dataset}"{data_dir}), config)
print("RESULT", json.dumps(dict(epoch_time_s=record["history"]["epoch_time_s"],
                                accuracy=record["test"]["accuracy"], tensorflow="tensorflow" in sys.modules)))
"""


def run_one(backend: str, pipeline: str, augment: str, args: argparse.Namespace) -> dict:
    """Train in a subprocess; the run's epoch times, test accuracy and whether TensorFlow was loaded."""
    block = args.block_tensorflow and backend != "tensorflow"
    data_dir = f", data_dir={args.data_dir!r}" if args.data_dir else ""
    code = CHILD.format(prelude=BLOCK_TENSORFLOW if block else "", preset=args.preset, epochs=args.epochs,
                        batch=args.batch_size, augment=augment, pipeline=pipeline, dataset=args.dataset,
                        data_dir=data_dir)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{backend}/{pipeline}/{augment} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    times = result["epoch_time_s"][1:] or result["epoch_time_s"]
    return {"backend": backend, "pipeline": pipeline, "augment": augment, "tensorflow_blocked": block,
            "epoch_s": statistics.median(times), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    parser.add_argument("--pipelines", nargs="+", default=["pydataset", "device"])
    parser.add_argument("--augments", nargs="+", default=["none", "digits"])
    parser.add_argument("--block-tensorflow", action="store_true",
                        help="hide TensorFlow from the jax and torch runs (as where it is not installed)")
    parser.add_argument("--preset", default="vit_mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    for backend in args.backends:
        for pipeline in args.pipelines:
            if pipeline == "tf.data" and args.block_tensorflow and backend != "tensorflow":
                continue
            for augment in args.augments:
                row = run_one(backend, pipeline, augment, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n| backend | TensorFlow | pipeline | " + " | ".join(f"{a} s/epoch" for a in args.augments)
          + " | ratio none/other |\n|---|---|---|" + "---|" * (len(args.augments) + 1))
    for backend in args.backends:
        for pipeline in args.pipelines:
            got = {r["augment"]: r for r in rows if r["backend"] == backend and r["pipeline"] == pipeline}
            if not got:
                continue
            first = next(iter(got.values()))
            times = [got[a]["epoch_s"] for a in args.augments]
            ratio = times[0] / times[-1] if len(times) > 1 else 1.0
            print(f"| {backend} | {'no' if first['tensorflow_blocked'] else 'yes'} | {pipeline} | "
                  + " | ".join(f"{t:.2f}" for t in times) + f" | {ratio:.2f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
