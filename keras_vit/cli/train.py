"""``keras-vit train``: fit a preset on a dataset with the recipe of :mod:`keras_vit.training`.

With no arguments it trains ``vit_mnist`` on the MNIST sample shipped in the package (offline, a few
minutes on two CPU cores). Writes ``OUTPUT/model.keras``, ``OUTPUT/history.json``,
``OUTPUT/checkpoints/`` and, while running, ``OUTPUT/backup/``: rerunning the same command after an
interruption resumes from the last completed epoch.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _number(low: float, high: float | None = None, *, include_low: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < low if include_low else value <= low
        if value != value or too_low or (high is not None and value >= high):
            bounds = f"{'[' if include_low else '('}{low:g}, {'inf' if high is None else f'{high:g}'})"
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {text!r}")
        return value

    return parse


class _GivenPreset(argparse.Action):
    """Stores ``--preset`` and notes that it was given (``--init`` refuses an explicit preset)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.preset, namespace.preset_given = values, True


def register(subparsers) -> None:
    from keras_vit.options import (
        AUGMENT_POLICIES,
        DISTRIBUTE_MODES,
        MIXED_PRECISION_POLICIES,
        TEST_TIME_AUGMENTATIONS,
        TrainConfig,
    )

    d = TrainConfig()
    parser = subparsers.add_parser(
        "train", help="train a Vision Transformer on a dataset",
        description="Train a preset on a dataset (default: the MNIST sample shipped in the package). "
                    "Writes OUTPUT/model.keras and OUTPUT/history.json; rerun the same command to resume "
                    "an interrupted run.",
    )
    parser.add_argument("--preset", default="vit_mnist", action=_GivenPreset,
                        help="model preset (see `keras-vit presets`); not with --init")
    parser.add_argument("--init", metavar="CHECKPOINT_OR_MODEL",
                        help="fine-tune from a timm/Google checkpoint (.safetensors, .pth, .bin, .npz), a "
                             "pretrained name (hf-hub:timm/ARCH.TAG) or a .keras model instead of a fresh preset; "
                             "the head is replaced when the dataset's classes differ")
    parser.add_argument("--image-size", type=_positive_int, metavar="S",
                        help="train at S x S (the positional embedding of --init weights is resized)")
    parser.add_argument("--drop-path", type=_number(0, 1), metavar="RATE",
                        help="stochastic depth rate of the last block (default: the preset's)")
    parser.add_argument("--dropout", type=_number(0, 1), metavar="RATE",
                        help="dropout rate in the blocks and on the embedded tokens (default: the preset's)")
    parser.add_argument("--dataset", default="sample",
                        help="sample (packaged MNIST subset, default), mnist, fashion_mnist, cifar10, "
                             "a .npz file or an image folder")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the datasets' .npz files (default: $KERAS_VIT_DATA, else download)")
    parser.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"default {d.epochs}")
    parser.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                        help=f"default {d.batch_size}")
    parser.add_argument("--learning-rate", type=_number(0, include_low=False), default=d.learning_rate,
                        help=f"peak learning rate after warm-up, default {d.learning_rate:g}")
    parser.add_argument("--weight-decay", type=_number(0), default=d.weight_decay,
                        help=f"AdamW weight decay, default {d.weight_decay:g}")
    parser.add_argument("--warmup-epochs", type=_number(0), default=d.warmup_epochs,
                        help=f"linear warm-up length, default {d.warmup_epochs:g}")
    parser.add_argument("--label-smoothing", type=_number(0, 1), default=d.label_smoothing,
                        help=f"default {d.label_smoothing:g}")
    parser.add_argument("--augment", default=d.augment,
                        choices=("auto", *AUGMENT_POLICIES),
                        help="augmentation policy (auto: by dataset for runs of 30+ epochs, none for shorter "
                             "runs; digits are never flipped)")
    parser.add_argument("--tta", default=d.tta, choices=TEST_TIME_AUGMENTATIONS,
                        help="flip: also report the test accuracy with flip test-time augmentation (each test "
                             "image and its mirror, probabilities averaged; for datasets trained with "
                             "mirroring, not digits). Default none")
    parser.add_argument("--validation-split", type=_number(0, 1), default=d.validation_split,
                        help=f"fraction of the training images held out, default {d.validation_split:g}")
    parser.add_argument("--output", metavar="DIR",
                        help="output folder (default runs/<preset>_<dataset>)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    parser.add_argument("--mixed-precision", choices=tuple(MIXED_PRECISION_POLICIES),
                        help="train in mixed precision (the head stays float32)")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="force XLA compilation on or off (default: Keras' auto)")
    parser.add_argument("--checkpoints", action=argparse.BooleanOptionalAction, default=d.checkpoints,
                        help="save OUTPUT/checkpoints/epoch_NNN.keras after every epoch (default on)")
    parser.add_argument("--distribute", choices=DISTRIBUTE_MODES, default=d.distribute,
                        help="data-parallel: split each batch over every device (JAX: keras.distribution, "
                             "several hosts via KERAS_DISTRIBUTION_*; TensorFlow: MirroredStrategy, several hosts "
                             "via TF_CONFIG); auto: data-parallel when more than one GPU/TPU is visible or a "
                             "cluster is configured. --batch-size stays the "
                             f"global batch. Default {d.distribute}")
    parser.add_argument("--devices", type=_positive_int, metavar="N",
                        help="with --distribute: use only the first N devices of this machine (default all)")
    parser.add_argument("--quiet", action="store_true",
                        help="one line per epoch instead of progress bars (the default when the output is not "
                             "a terminal)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again from the start when OUTPUT holds a finished run (its model.keras and "
                             "checkpoints are replaced); without it such a run is refused")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from keras_vit.startup import backend_note

    print(backend_note(), flush=True)  # before the framework loads: it says what is being loaded
    from keras_vit.datasets import load_dataset
    from keras_vit.distribute import configure_distribution
    from keras_vit.training import mixed_precision

    if args.init and getattr(args, "preset_given", False):  # --init fixes the architecture, not the preset
        from keras_vit.errors import UserInputError

        raise UserInputError(f"--init and --preset exclude each other: {args.init} fixes the architecture "
                             f"(drop --preset {args.preset}, or --init to train the preset from scratch).")
    distribution = configure_distribution(args.distribute, args.devices)  # before the backend does any work
    dataset = load_dataset(args.dataset, args.data_dir)
    config = _config(args, dataset.name)
    config.validate()
    _check_finished_run(Path(config.output_dir), args.overwrite)
    with mixed_precision(config.mixed_precision):
        with distribution.scope():
            model = _build_model(args, dataset)
        from keras_vit.training import fit

        record = fit(model, dataset, config)
    test = record["test"]
    epochs = f"{record['epochs_completed']} epoch{'' if record['epochs_completed'] == 1 else 's'}"
    with_tta = (f", {record['test_tta']['accuracy']:.2%} with {config.tta} test-time augmentation"
                if "test_tta" in record else "")
    print(f"Test accuracy: {test['accuracy']:.2%} (loss {test['loss']:.4f}) on {test['images']:,} "
          f"{dataset.name} test images{with_tta}; {epochs} in "
          f"{record['train_time_s']:.0f} s")
    if distribution.is_chief:
        print(f"Saved {config.output_dir}/model.keras and {config.output_dir}/history.json")
    return 0


def _check_finished_run(output: Path, overwrite: bool) -> None:
    """Refuse to retrain over a finished run unless ``--overwrite`` (whose old checkpoints go first)."""
    from keras_vit.errors import UserInputError

    if not (output / "model.keras").exists() or (output / "backup").is_dir():
        return  # a new run, or an interrupted one that resumes
    if not overwrite:
        raise UserInputError(f"{output} holds a finished run (model.keras); pass --overwrite to train again "
                             "from the start, or choose another --output.")
    for old in (output / "checkpoints").glob("epoch_*.keras"):
        old.unlink()


def _config(args: argparse.Namespace, dataset_name: str):
    from keras_vit.options import TrainConfig

    output = args.output or f"runs/{args.preset}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset_name)}"
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, validation_split=args.validation_split,
        augment=args.augment, seed=args.seed, output_dir=output, mixed_precision=args.mixed_precision,
        jit_compile="auto" if args.jit_compile is None else args.jit_compile,
        # Progress bars redraw one line: in a log file (stdout not a terminal) each epoch became 16 KB of
        # redraws. There, and with --quiet, Keras prints one line per epoch instead.
        checkpoints=args.checkpoints, verbose=2 if args.quiet or not sys.stdout.isatty() else "auto",
        distribute=args.distribute, devices=args.devices, tta=args.tta,
    )


def _build_model(args: argparse.Namespace, dataset):
    """The model ``train`` fits: the preset, with the dataset's classes, weights seeded by ``--seed``.

    It keeps the preset's input size and channels; ``fit`` converts images that differ (and says so).
    ``--drop-path`` and ``--dropout`` change only the regularisation (same weights, same parameters).
    ``--init`` starts from a checkpoint or ``.keras`` model instead (see ``keras_vit.weights``).
    """
    from keras_vit.presets import create_model
    from keras_vit.training import set_seed

    set_seed(args.seed)
    given = {"image_size": args.image_size, "drop_path": args.drop_path, "dropout": args.dropout}
    overrides = {key: value for key, value in given.items() if value is not None}
    if args.init:
        from keras_vit.weights import load_initial_model

        return load_initial_model(
            args.init, num_classes=dataset.num_classes, class_names=list(dataset.class_names), **overrides
        )
    return create_model(
        args.preset, num_classes=dataset.num_classes, class_names=list(dataset.class_names), **overrides
    )
