"""``keras-vit evaluate MODEL.keras --dataset NAME``: accuracy and loss on a dataset's test split."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from keras_vit.options import TEST_TIME_AUGMENTATIONS

    parser = subparsers.add_parser(
        "evaluate", help="accuracy and loss of a saved model on a dataset's test split",
        description="Evaluate a model saved by keras-vit (.keras) on the test split of a dataset. "
                    "Images of another size or channel count are converted to the model's input.",
    )
    parser.add_argument("model", metavar="MODEL.keras", help="a model saved by `keras-vit train`")
    parser.add_argument("--dataset", required=True,
                        help="sample, mnist, fashion_mnist, cifar10, a .npz file or an image folder")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the datasets' .npz files (default: $KERAS_VIT_DATA, else download)")
    parser.add_argument("--batch-size", type=int, default=256, help="default 256")
    parser.add_argument("--tta", default="none", choices=TEST_TIME_AUGMENTATIONS,
                        help="flip: test-time augmentation, each image and its left-right mirror with their "
                             "probabilities averaged (for models trained with mirroring; not digits). "
                             "Default none")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from keras_vit.errors import UserInputError

    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    from keras_vit.model_file import load_vit_model

    model = load_vit_model(args.model, needed_by="evaluate")  # path checks before a framework loads
    from keras_vit.datasets import load_dataset, note
    from keras_vit.training import evaluate
    dataset = load_dataset(args.dataset, args.data_dir)
    if model.class_names and list(model.class_names[:dataset.num_classes]) != list(dataset.class_names):
        note(f"the model's classes ({', '.join(model.class_names[:4])}, ...) are not {dataset.name}'s "
             f"({', '.join(dataset.class_names[:4])}, ...); labels are compared by index")
    result = evaluate(model, dataset, batch_size=args.batch_size, tta=args.tta)
    if args.json:
        print(json.dumps({**result, "dataset": dataset.name, "model": str(args.model)}))
    else:
        with_tta = f", {args.tta} test-time augmentation" if args.tta != "none" else ""
        print(f"accuracy {result['accuracy']:.2%}  loss {result['loss']:.4f}  "
              f"({result['images']:,} {dataset.name} test images{with_tta})")
    return 0
