"""``keras-vit train`` and ``keras-vit evaluate``: outputs, files, and every error as one line with exit 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_vit.cli.main import build_parser, main
from keras_vit.datasets import DATA_ENV, load_dataset
from keras_vit.training import TrainConfig

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """128 train / 32 test images of the MNIST sample, with class names."""
    ds = load_dataset("sample")
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=ds.x_train[:128, ..., 0], y_train=ds.y_train[:128], x_test=ds.x_test[:32, ..., 0],
             y_test=ds.y_test[:32], class_names=np.array(WORDS))
    return path


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``keras-vit argv`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, command, message, exit_code=2):
    assert code == exit_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"keras-vit {command}: error: {message}"), lines[0]


@pytest.fixture(scope="module")
def trained(tiny_npz, tmp_path_factory):
    """A one-epoch ``keras-vit train`` run on the tiny dataset: ``(output dir, stdout)``."""
    out = tmp_path_factory.mktemp("run")
    stdout = io.StringIO()  # module-scoped fixtures cannot use capsys: capture by hand
    with contextlib.redirect_stdout(stdout):
        code = main(["train", "--dataset", str(tiny_npz), "--epochs", "1", "--batch-size", "32",
                     "--output", str(out), "--quiet", "--seed", "3", "--tta", "flip"])
    assert code == 0, stdout.getvalue()
    return out, stdout.getvalue()


# ------------------------------------------------------------------------------------------------
# Working commands


def test_train_defaults_are_the_offline_sample():
    args = build_parser().parse_args(["train"])
    assert (args.preset, args.dataset, args.data_dir) == ("vit_mnist", "sample", None)
    assert args.epochs == TrainConfig().epochs and args.batch_size == TrainConfig().batch_size


def test_train_regularisation_overrides_change_only_the_rates(tiny_npz):
    from keras_vit.cli.train import _build_model

    dataset = load_dataset(str(tiny_npz))
    plain = _build_model(build_parser().parse_args(["train", "--preset", "vit_mnist_p4"]), dataset)
    args = build_parser().parse_args(["train", "--preset", "vit_mnist_p4", "--drop-path", "0.2", "--dropout", "0.05"])
    model = _build_model(args, dataset)
    assert (model.drop_path, model.dropout) == (0.2, 0.05)
    assert (plain.drop_path, plain.dropout) == (0.05, 0.0)  # the preset's
    assert model.count_params() == plain.count_params()
    assert model.blocks[-1].drop_path_rate == pytest.approx(0.2)


def test_train_writes_model_and_history_and_prints_test_accuracy(trained):
    out, stdout = trained
    record = json.loads((out / "history.json").read_text())
    accuracy = record["test"]["accuracy"]
    assert f"Test accuracy: {accuracy:.2%} " in stdout
    assert f", {record['test_tta']['accuracy']:.2%} with flip test-time augmentation;" in stdout
    assert "on 32 tiny test images, " in stdout and "; 1 epoch in " in stdout and "1 epoch of 4 steps" in stdout
    assert record["status"] == "completed" and record["history"]["epoch"] == [1]
    assert record["config"]["seed"] == 3 and record["config"]["batch_size"] == 32
    model = keras.saving.load_model(out / "model.keras")
    assert model.class_names == WORDS and model.num_classes == 10 and model.preset == "vit_mnist"
    assert (out / "checkpoints" / "epoch_001.keras").is_file()


def test_evaluate_json_matches_the_training_record(trained, tiny_npz, capsys):
    out, _ = trained
    code, stdout, _ = run_cli(capsys, "evaluate", out / "model.keras", "--dataset", tiny_npz, "--json")
    assert code == 0
    result = json.loads(stdout)
    record = json.loads((out / "history.json").read_text())
    assert result["accuracy"] == pytest.approx(record["test"]["accuracy"])
    assert result["loss"] == pytest.approx(record["test"]["loss"], rel=1e-5)
    assert result["images"] == 32 and result["dataset"] == "tiny"


def test_evaluate_flip_tta_matches_the_training_record(trained, tiny_npz, capsys):
    out, _ = trained
    code, stdout, _ = run_cli(capsys, "evaluate", out / "model.keras", "--dataset", tiny_npz, "--tta", "flip",
                              "--json")
    assert code == 0
    result = json.loads(stdout)
    record = json.loads((out / "history.json").read_text())
    assert result["tta"] == record["test_tta"]["tta"] == "flip"
    assert result["accuracy"] == pytest.approx(record["test_tta"]["accuracy"])
    assert result["loss"] == pytest.approx(record["test_tta"]["loss"], rel=1e-5)
    code, stdout, _ = run_cli(capsys, "evaluate", out / "model.keras", "--dataset", tiny_npz, "--tta", "flip")
    assert code == 0 and stdout.rstrip().endswith("(32 tiny test images, flip test-time augmentation)")


def test_evaluate_plain_output(trained, tiny_npz, capsys):
    out, _ = trained
    code, stdout, _ = run_cli(capsys, "evaluate", out / "model.keras", "--dataset", tiny_npz)
    assert code == 0
    assert stdout.startswith("accuracy ") and stdout.rstrip().endswith("(32 tiny test images)")


def test_evaluate_converts_other_image_sizes_and_says_so(trained, tiny_npz, tmp_path, capsys):
    with np.load(tiny_npz) as d:
        arrays = {k: d[k] for k in d.files}
    for key in ("x_train", "x_test"):
        padded = np.pad(arrays[key], ((0, 0), (2, 2), (2, 2)))
        arrays[key] = np.repeat(padded[..., None], 3, axis=-1)  # 32x32 RGB
    rgb = tmp_path / "rgb32.npz"
    np.savez(rgb, **arrays)
    out, _ = trained
    code, stdout, err = run_cli(capsys, "evaluate", out / "model.keras", "--dataset", rgb, "--json")
    assert code == 0
    assert "rgb32 images are 32x32x3; converting them to the model's 28x28x1" in err
    from keras_vit.training import evaluate

    reference = evaluate(keras.saving.load_model(out / "model.keras"), load_dataset(str(rgb)))
    assert json.loads(stdout)["accuracy"] == pytest.approx(reference["accuracy"], abs=1e-12)  # the figure from Python


# ------------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit code 2 (1 for a failed run), no traceback


@pytest.fixture()
def bad_files(tmp_path):
    rng = np.random.default_rng(0)
    good = dict(x_train=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), y_train=np.arange(8) % 2,
                x_test=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8), y_test=np.arange(4) % 2)
    np.savez(tmp_path / "nokeys.npz", x_train=good["x_train"], y_train=good["y_train"])
    np.savez(tmp_path / "negative.npz", **{**good, "y_train": -(np.arange(8) % 2)})
    np.savez(tmp_path / "twelve.npz", **{**good, "y_test": np.array([0, 11, 2, 3])})
    (tmp_path / "corrupt.keras").write_bytes(b"PK\x03\x04 this is no model")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    from PIL import Image

    for cls, size in (("a", (28, 28)), ("b", (30, 28))):
        (tmp_path / "mixed" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "mixed" / cls / "0.png")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--preset", "vit_huge"], "Unknown preset 'vit_huge'. Available presets: vit_mnist,"),
    (["--dataset", "{d}/missing.npz"], "Dataset file not found: {d}/missing.npz."),
    (["--dataset", "{d}/nokeys.npz"], "{d}/nokeys.npz lacks the key(s) x_test, y_test: a dataset .npz needs"),
    (["--dataset", "{d}/negative.npz"], "negative: y_train has negative labels (-1); labels must be 0..K-1."),
    (["--dataset", "{d}/mixed"], "Images in {d}/mixed have different sizes: a/0.png is 28x28, b/0.png is 30x28"),
    (["--dataset", "mnist", "--data-dir", "{d}/nowhere"], "--data-dir {d}/nowhere is not a folder."),
    (["--dataset", "mnist", "--data-dir", "{d}"], "mnist not found in {d}: looked for {d}/mnist/mnist.npz"),
    (["--dataset", "imagenet"], "Unknown dataset 'imagenet': use one of sample, mnist, fashion_mnist, cifar10"),
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--validation-split", "1.5"], "argument --validation-split: expected a number in [0, 1), got '1.5'"),
    (["--learning-rate", "abc"], "argument --learning-rate: expected a number, got 'abc'"),
    (["--drop-path", "1"], "argument --drop-path: expected a number in [0, 1), got '1'"),
    (["--mixed-precision", "int8"], "argument --mixed-precision: invalid choice: 'int8'"),
])
def test_train_errors(bad_files, capsys, argv, message):
    d = str(bad_files)
    code, _, err = run_cli(capsys, "train", *[a.format(d=d) for a in argv])
    assert_one_line_error(code, err, "train", message.format(d=d))


def test_train_download_failure(capsys, monkeypatch):
    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/tf-keras-datasets")

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    code, _, err = run_cli(capsys, "train", "--dataset", "fashion_mnist")
    assert_one_line_error(code, err, "train", "Could not download fashion_mnist: URL fetch failure")
    assert "Pass --data-dir DIR with DIR/fashion_mnist/fashion_mnist.npz, or set KERAS_VIT_DATA." in err


def test_train_nan_loss_is_a_clear_failure(tiny_npz, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", tiny_npz, "--epochs", "2", "--batch-size", "32",
                           "--learning-rate", "1e30", "--output", tmp_path, "--quiet")
    assert_one_line_error(code, err, "train", "loss became NaN at epoch 1, batch ", exit_code=1)
    assert "try a lower --learning-rate (it was 1e+30)" in err
    assert not (tmp_path / "model.keras").exists()


@pytest.mark.parametrize("model, message", [
    ("{d}/absent.keras", "Model file not found: {d}/absent.keras."),
    ("{d}/model.h5", "{d}/model.h5 is not a .keras file; pass a model saved with model.save('NAME.keras')."),
    ("{d}/corrupt.keras", "{d}/corrupt.keras is not a valid .keras file (not a zip archive): it is truncated or "
                          "corrupt."),
])
def test_evaluate_bad_model_files(bad_files, capsys, model, message):
    d = str(bad_files)
    code, _, err = run_cli(capsys, "evaluate", model.format(d=d), "--dataset", "sample")
    assert_one_line_error(code, err, "evaluate", message.format(d=d))


def test_evaluate_refuses_other_keras_models(tmp_path, capsys):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "dense.keras")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "dense.keras", "--dataset", "sample")
    assert_one_line_error(code, err, "evaluate", f"{tmp_path}/dense.keras holds a Sequential, not a keras-vit "
                                                 "VisionTransformer; evaluate needs a model saved by keras-vit.")


def test_evaluate_labels_beyond_the_model(trained, bad_files, capsys):
    out, _ = trained
    code, _, err = run_cli(capsys, "evaluate", out / "model.keras", "--dataset", bad_files / "twelve.npz")
    assert_one_line_error(code, err, "evaluate", "twelve has labels up to 11 but the model has 10 classes; "
                                                 "use a model built for this dataset.")


def test_evaluate_needs_a_dataset(capsys):
    code, _, err = run_cli(capsys, "evaluate", "model.keras")
    assert_one_line_error(code, err, "evaluate", "the following arguments are required: --dataset")


def test_console_script_reports_errors_without_traceback(tmp_path):
    """The installed ``keras-vit`` program, as a user runs it."""
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
    proc = subprocess.run([sys.executable, "-m", "keras_vit.cli.main", "evaluate", str(tmp_path / "m.keras"),
                           "--dataset", "sample"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"keras-vit evaluate: error: Model file not found: {tmp_path}/m.keras."


# ------------------------------------------------------------------------------------------------
# Interrupt, resume, rerun: each says what happened in one line


class _CtrlC(keras.callbacks.Callback):
    """Raise KeyboardInterrupt (as Ctrl-C does) at batch ``batch`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


@pytest.fixture()
def interrupt_at(monkeypatch):
    """``interrupt_at(epoch, batch)``: the next ``keras-vit train`` in this process is interrupted there."""
    import keras_vit.training as training

    real_fit = training.fit

    def arm(epoch, batch):
        monkeypatch.setattr(training, "fit", lambda model, data, config: real_fit(
            model, data, config, callbacks=[_CtrlC(epoch, batch)]))
    yield arm


def test_interrupt_resume_and_rerun_say_what_happens(tiny_npz, tmp_path, capsys, interrupt_at, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tiny_npz), "--epochs", "2", "--batch-size", "32", "--output", str(out),
            "--quiet"]
    command = "keras-vit " + " ".join(argv)
    interrupt_at(1, 1)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130
    assert err.strip().splitlines()[-1] == (f"keras-vit train: interrupted in epoch 2 of 2; 1 completed epoch backed "
                                            f"up in {out}/backup; resume with: {command}")
    monkeypatch.undo()

    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0
    assert f"Resuming from epoch 2 of 2: the 1 completed epoch restored from {out}/backup\n" in stdout
    record = json.loads((out / "history.json").read_text())
    assert record["resumed_at_epoch"] == 2 and record["history"]["epoch"] == [1, 2]

    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "train", f"{out} holds a finished run (model.keras); pass --overwrite to train "
                                              "again from the start, or choose another --output.")
    code, stdout, _ = run_cli(capsys, *argv, "--overwrite", "--epochs", "1")
    assert code == 0
    assert f"Starting over: {out} holds a finished run; its model.keras will be replaced\n" in stdout
    assert json.loads((out / "history.json").read_text())["history"]["epoch"] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001.keras"]


def test_interrupt_before_an_epoch_completed_says_a_rerun_starts_over(tiny_npz, tmp_path, capsys, interrupt_at):
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tiny_npz), "--epochs", "2", "--batch-size", "32", "--output", str(out),
            "--quiet"]
    interrupt_at(0, 1)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130
    assert err.strip().splitlines()[-1] == (
        f"keras-vit train: interrupted in epoch 1 of 2, before the first epoch completed (a rerun starts over); "
        f"start again with: keras-vit {' '.join(argv)}")
    code, stdout, _ = run_cli(capsys, *argv)  # interrupted again, after saying how it starts
    assert code == 130
    assert f"Starting over: the interrupted run in {out} left no backup to resume from\n" in stdout


def test_training_interrupted_messages():
    from keras_vit.errors import TrainingInterrupted

    assert isinstance(TrainingInterrupted(1, 2, 0, "b"), KeyboardInterrupt)
    assert str(TrainingInterrupted(3, 10, 2, "runs/x/backup")) == (
        "interrupted in epoch 3 of 10; 2 completed epochs backed up in runs/x/backup")
    assert TrainingInterrupted(3, 10, 2, "runs/x/backup").resumable
    assert str(TrainingInterrupted(1, 10, 0, "b")) == (
        "interrupted in epoch 1 of 10, before the first epoch completed (a rerun starts over)")
    assert str(TrainingInterrupted(2, 10, 1, None)) == ("interrupted in epoch 2 of 10 (no output folder: nothing to "
                                                        "resume)")
    last = TrainingInterrupted(None, 10, 10, "b")
    assert not last.resumable and str(last) == ("interrupted after the last of 10 epochs, before the model was "
                                                "tested and saved (a rerun starts over)")


def test_every_reader_of_a_model_file_says_the_same(bad_files, tmp_path):
    """evaluate, train --init and the exporters open .keras files through one owner (keras_vit.model_file):
    the same bad file gets the same sentence from each."""
    from keras_vit.errors import UserInputError
    from keras_vit.export import to_onnx
    from keras_vit.model_file import load_vit_model
    from keras_vit.weights import load_initial_model

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "dense.keras")
    for name in ("absent.keras", "model.h5", "corrupt.keras"):
        path = bad_files / name
        messages = set()
        readers = [load_vit_model, lambda p: to_onnx(p, tmp_path / "m.onnx")]
        if name.endswith(".keras"):  # train --init reads any other file as a timm or Google checkpoint
            readers.append(load_initial_model)
        for reader in readers:
            with pytest.raises(UserInputError) as caught:
                reader(path)
            messages.add(str(caught.value))
        assert len(messages) == 1, messages
    with pytest.raises(UserInputError, match="holds a Sequential, not a keras-vit VisionTransformer; --init needs"):
        load_initial_model(tmp_path / "dense.keras")
