"""Data-parallel ``fit`` on two virtual CPU devices matches one device; the result exports like any model.

The two-device runs need the device count fixed before JAX / TensorFlow start, so they run this file
as a script in a subprocess (``python tests/test_distribute.py worker OUT_DIR`` with ``KERAS_BACKEND`` set):
JAX gets ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, TensorFlow two logical CPU devices.
The worker trains the same tiny ViT from the same seed on the same 4 global batches of 16 real MNIST
images, once on one device and once data-parallel, and writes what the tests compare as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

#: |loss(data-parallel) - loss(one device)| after each of the 4 steps (float32, summation order differs).
LOSS_TOLERANCE = 1e-5
#: max |weight difference| after 4 AdamW steps (Adam's m / sqrt(v) amplifies rounding in tiny gradients).
WEIGHT_TOLERANCE = 1e-4
#: max |logit difference| of the exported ONNX file against Keras (the issue's bar).
ONNX_TOLERANCE = 1e-4

GLOBAL_BATCH, STEPS = 16, 4
MODEL_OPTIONS = dict(depth=1, hidden_dim=32, num_heads=2, mlp_dim=64, dropout=0.0)


# --------------------------------------------------------------------------------------------------
# Subprocess plumbing


def _run_worker(backend: str, out: Path, devices: int = 2) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               KERAS_VIT_TEST_DEVICES=str(devices))
    if backend == "jax":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    done = subprocess.run([sys.executable, str(HERE), "worker", str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dp_jax")
    return _run_worker("jax", out), out


@pytest.fixture(scope="module")
def tf_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dp_tf")
    return _run_worker("tensorflow", out), out


# --------------------------------------------------------------------------------------------------
# Two devices: same losses and weights as one, identical replicas


def _check_match(result: dict, engine: str) -> None:
    print(json.dumps({k: result[k] for k in ("describe", "single_losses", "parallel_losses", "max_loss_diff",
                                             "max_weight_diff", "replica_spread")}, indent=1))
    assert result["num_replicas"] == 2 and result["engine"] == engine
    assert result["describe"].startswith("data-parallel over 2 devices")
    assert len(result["single_losses"]) == len(result["parallel_losses"]) == STEPS
    assert np.all(np.isfinite(result["parallel_losses"]))
    assert result["max_loss_diff"] <= LOSS_TOLERANCE
    assert result["max_weight_diff"] <= WEIGHT_TOLERANCE
    # The clipping threshold is low enough that every step is clipped: the comparison covers clipping.
    assert result["clipped_steps"] == STEPS


def test_jax_data_parallel_matches_one_device(jax_run):
    result, _ = jax_run
    _check_match(result, "keras.distribution.DataParallel")
    # Every variable (model and optimizer) lives on both devices, fully replicated, with equal values.
    assert result["replicas_per_variable"] == [2]
    assert result["fully_replicated"] is True
    assert result["replica_spread"] == 0.0


def test_tensorflow_mirrored_matches_one_device(tf_run):
    result, _ = tf_run
    _check_match(result, "tf.distribute.MirroredStrategy")
    # Every variable is a MirroredVariable with one value per replica, all equal.
    assert result["variable_types"] == ["MirroredVariable"]
    assert result["optimizer_patched_after_scope"] == []
    assert result["replicas_per_variable"] == [2]
    assert result["replica_spread"] == 0.0


# --------------------------------------------------------------------------------------------------
# A model trained data-parallel saves, reloads and exports like any other


_CLI_CHILD = """
import os, sys
if os.environ["KERAS_BACKEND"] == "tensorflow":  # two logical CPU devices, before TensorFlow starts
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_vit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_cli_data_parallel_model_saves_reloads_and_exports_to_onnx(backend, tmp_path):
    """``keras-vit train --distribute data-parallel`` on 2 devices writes a model.keras that reloads (here, on
    TensorFlow) and, trained on JAX, exports to ONNX within 1e-4 of Keras."""
    import keras
    import onnxruntime as ort

    from keras_vit.export import to_onnx

    data, images = _tiny_npz(tmp_path)
    out = tmp_path / "run"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    argv = ["train", "--dataset", str(data), "--epochs", "1", "--batch-size", "64", "--augment", "none",
            "--output", str(out), "--quiet", "--distribute", "data-parallel"]
    done = subprocess.run([sys.executable, "-c", _CLI_CHILD, *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data-parallel over 2 devices (cpu:0, cpu:1)" in done.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "completed" and history["epochs_completed"] == 1
    assert history["distribution"].startswith("data-parallel over 2 devices")
    assert history["steps_per_epoch"] == (4 if backend == "jax" else 5)  # JAX drops the partial batch
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "history.json", "model.keras"]

    reloaded = keras.saving.load_model(out / "model.keras")
    assert type(reloaded).__name__ == "VisionTransformer"
    keras_logits = keras.ops.convert_to_numpy(reloaded(images, training=False))
    assert np.all(np.isfinite(keras_logits))
    if backend != "jax":
        return  # one export is enough: the file is the same kind of .keras whichever backend trained it
    report = to_onnx(out / "model.keras", tmp_path / "dp.onnx")
    assert report.parity["max_abs_diff"] <= ONNX_TOLERANCE
    session = ort.InferenceSession(str(tmp_path / "dp.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"images": images})[0]
    print(f"{backend}: onnx vs reloaded keras logits {float(np.max(np.abs(onnx_logits - keras_logits))):.3g}, "
          f"export parity {report.parity['max_abs_diff']:.3g}")
    assert np.max(np.abs(onnx_logits - keras_logits)) <= ONNX_TOLERANCE


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_npz(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """288 train (4 global batches of 64 + a partial one) / 32 validation / 64 test MNIST images; test images."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import load_mnist_arrays

    (x_train, y_train), (x_test, y_test) = load_mnist_arrays()
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x_train[:320], y_train=y_train[:320], x_test=x_test[:64], y_test=y_test[:64])
    return data, ((x_test[:16].astype("float32") / 255.0 - 0.1307) / 0.3081)[..., None]


def _train_in_processes(argv: list[str], envs: list[dict], launcher: tuple[str, ...] = ("-m", "keras_vit.cli.main")
                        ) -> list[str]:
    """Run ``keras-vit train ARGV`` once per environment, all at the same time; their stdouts."""
    procs = [subprocess.Popen([sys.executable, *launcher, "train", *argv], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    try:
        outputs = [proc.communicate(timeout=900) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for rank, (proc, (stdout, stderr)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {rank}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return [stdout for stdout, _ in outputs]


def _check_cluster_run(stdouts: list[str], one: Path, two: Path, images: np.ndarray) -> None:
    """Both workers trained as workers 0 and 1, only the chief wrote files, and the run matches one process's."""
    import keras

    import keras_vit  # noqa: F401  (registers the layers for loading)

    for rank, stdout in enumerate(stdouts):
        assert f"2 workers (this is worker {rank})" in stdout
    assert "Saved " in stdouts[0] and "Saved " not in stdouts[1]  # only the chief reports files
    # The chief's files, nothing from the other worker (its backup folder is removed when training ends).
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "history.json", "model.keras"]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["epoch_001.keras", "epoch_002.keras"]
    single, multi = (json.loads((d / "history.json").read_text()) for d in (one, two))
    assert multi["status"] == "completed" and multi["steps_per_epoch"] == single["steps_per_epoch"]
    assert "2 workers" in multi["distribution"]
    print({"reference": single["history"]["loss"], "cluster": multi["history"]["loss"]})
    for key in ("loss", "accuracy"):  # (32 validation images: too few for JAX's global batch, so no val_loss)
        np.testing.assert_allclose(multi["history"][key], single["history"][key], atol=LOSS_TOLERANCE, rtol=0)
    logits = [keras.ops.convert_to_numpy(keras.saving.load_model(d / "model.keras")(images, training=False))
              for d in (one, two)]
    print(f"max |logit difference| of the two models: {float(np.max(np.abs(logits[0] - logits[1]))):.3g}")
    assert np.max(np.abs(logits[0] - logits[1])) <= WEIGHT_TOLERANCE


_TRAIN_ARGS = ["--epochs", "2", "--batch-size", "64", "--augment", "none", "--quiet"]


@pytest.mark.slow
def test_jax_two_processes_train_like_one_process_with_two_devices(tmp_path):
    """Multi-host JAX (``keras.distribution.initialize`` from the KERAS_DISTRIBUTION_* variables): two local
    processes with one CPU device each, joined through gloo, take the same steps as one process with two
    devices (same losses), the chief alone writes the run's files, and its model gives the same logits.

    Guards a deadlock: Keras' ``save`` runs collectives under the distribution, so a checkpoint saved by the
    chief alone waited forever for the other process (the non-chief now saves in step and discards)."""
    data, images = _tiny_npz(tmp_path)
    argv = ["--dataset", str(data), *_TRAIN_ARGS, "--distribute", "data-parallel"]
    base = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    xla = base.get("XLA_FLAGS", "")
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    _train_in_processes([*argv, "--output", str(one)],
                        [dict(base, XLA_FLAGS=f"{xla} --xla_force_host_platform_device_count=2".strip())])
    port = _free_port()
    stdouts = _train_in_processes(
        [*argv, "--output", str(two)],
        [dict(base, XLA_FLAGS=f"{xla} --xla_force_host_platform_device_count=1".strip(),
              KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES="2",
              KERAS_DISTRIBUTION_PROCESS_ID=str(rank)) for rank in range(2)])
    _check_cluster_run(stdouts, one, two, images)


@pytest.mark.slow
def test_tensorflow_two_workers_train_like_one_device(tmp_path):
    """``TF_CONFIG`` with two local workers: ``MultiWorkerMirroredStrategy`` (with keras-vit's two corrections
    to Keras 3's fit, keras-team/keras#20585) takes the same steps as ``MirroredStrategy`` over two devices of
    one process (itself checked against one device above), and only worker 0 writes.

    The reference is two devices, not one: under any tf.distribute strategy Keras draws one batch to build
    the model before the first epoch, which advances the reshuffling dataset by one pass, so the batches
    come in another (equally random) order than on one device."""
    import keras

    import keras_vit

    data, images = _tiny_npz(tmp_path)
    # Dropout off (a .keras start point, as `--init` takes it): tf.distribute draws each replica's dropout
    # masks from its own generator, so with dropout the two runs would differ by more than rounding.
    keras.utils.set_random_seed(0)
    start = tmp_path / "start.keras"
    keras_vit.create_model("vit_mnist", dropout=0.0).save(start)
    # Batch 32: 288 = 9 full global batches. tf.distribute splits a partial last batch unevenly between the
    # replicas, and Keras' per-replica loss scaling then weighs that one step differently from one device.
    argv = ["--init", str(start), "--dataset", str(data), *_TRAIN_ARGS, "--batch-size", "32"]
    base = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    base.pop("TF_CONFIG", None)
    one, two = tmp_path / "two_devices", tmp_path / "two_workers"
    _train_in_processes([*argv, "--output", str(one), "--distribute", "data-parallel"], [base],
                        launcher=("-c", _CLI_CHILD))
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    stdouts = _train_in_processes(
        [*argv, "--output", str(two), "--distribute", "data-parallel"],
        [dict(base, TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}))
         for rank in range(2)])
    assert "MultiWorkerMirroredStrategy" in stdouts[0]
    _check_cluster_run(stdouts, one, two, images)


def test_jax_data_parallel_model_reloads_with_the_same_logits(jax_run):
    import keras

    _, out = jax_run
    images = np.load(out / "images.npy", allow_pickle=False)
    reloaded = keras.saving.load_model(out / "model.keras")
    logits = keras.ops.convert_to_numpy(reloaded(images, training=False))
    assert np.max(np.abs(logits - np.load(out / "logits.npy", allow_pickle=False))) <= 1e-5


def test_mirrored_model_reloads_with_the_same_logits(tf_run):
    import keras

    _, out = tf_run
    images = np.load(out / "images.npy", allow_pickle=False)
    reloaded = keras.saving.load_model(out / "model.keras")
    logits = keras.ops.convert_to_numpy(reloaded(images, training=False))
    assert np.max(np.abs(logits - np.load(out / "logits.npy", allow_pickle=False))) <= 1e-5


# --------------------------------------------------------------------------------------------------
# In-process behaviour (the default TensorFlow backend, one CPU device)


def test_auto_is_single_device_without_accelerators():
    from keras_vit.distribute import configure_distribution

    distribution = configure_distribution("auto")
    assert distribution.mode == "none" and distribution.num_replicas == 1 and distribution.is_chief
    assert distribution.global_batch_size(30) == 30
    assert distribution.describe().startswith("single device")
    with distribution.scope():  # a no-op scope still works as a context manager, more than once
        pass
    with distribution.scope():
        pass


def test_bad_requests_are_user_errors():
    from keras_vit.distribute import Distribution, configure_distribution
    from keras_vit.errors import UserInputError

    with pytest.raises(UserInputError, match="Unknown distribute mode 'mirrored'; use one of auto, none, data-par"):
        configure_distribution("mirrored")
    with pytest.raises(UserInputError, match="--devices must be at least 1, got 0."):
        configure_distribution("data-parallel", devices=0)
    with pytest.raises(UserInputError, match="--devices 64 asks for more devices than the 1 visible"):
        configure_distribution("data-parallel", devices=64)
    two = Distribution(mode="data-parallel", backend="jax", engine="x", devices=["cpu:0", "cpu:1"])
    assert two.global_batch_size(32) == 32 and two.per_replica_batch_size(32) == 16
    with pytest.raises(UserInputError, match="Batch size 33 does not split evenly over 2 replicas; use a multiple"):
        two.global_batch_size(33)


def test_tf_config_with_devices_is_a_user_error(monkeypatch):
    """``--devices`` picks devices of one machine; a TF_CONFIG cluster uses every worker's."""
    from keras_vit.distribute import configure_distribution
    from keras_vit.errors import UserInputError

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    with pytest.raises(UserInputError, match="--devices applies to one machine; with TF_CONFIG every device"):
        configure_distribution("data-parallel", devices=1)
    assert configure_distribution("none").num_replicas == 1


def test_partial_batches_are_dropped_only_where_jax_needs_it():
    import tensorflow as tf

    from keras_vit.distribute import Distribution, drop_partial_batches
    from keras_vit.training import ArrayBatches, tf_data_pipeline

    x, y = np.zeros((37, 4, 4, 1), np.uint8), np.arange(37) % 3
    batches = ArrayBatches(x, y, batch_size=8, preprocessing={"scale": 1.0}, num_classes=3)
    full = drop_partial_batches(batches, 8)
    assert len(batches) == 5 and len(full) == 4 and all(len(full[i][0]) == 8 for i in range(len(full)))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    assert [int(a.shape[0]) for a, _ in drop_partial_batches(ds, 8)] == [8, 8, 8, 8]
    # The recipe's pipeline (batch, then map) hides its batch size from keras.distribution, which needs it
    # to split tf.data between the processes of a multi-host JAX run; the full-batch view states it.
    from tensorflow.python.data.experimental.ops.distribute import compute_batch_size

    recipe = tf_data_pipeline(x, y, batch_size=8, preprocessing={"scale": 1.0}, num_classes=3, shuffle=True)
    assert int(compute_batch_size(recipe)) == -1
    assert int(compute_batch_size(drop_partial_batches(recipe, 8))) == 8

    jax_two = Distribution(mode="data-parallel", backend="jax", engine="x", devices=["cpu:0", "cpu:1"])
    tf_two = Distribution(mode="data-parallel", backend="tensorflow", engine="x", devices=["cpu:0", "cpu:1"])
    assert len(jax_two.full_batches(batches, 8)) == 4
    assert tf_two.full_batches(batches, 8) is batches  # tf.distribute splits a partial batch itself


def test_scaled_learning_rate_is_linear():
    from keras_vit.distribute import scaled_learning_rate

    assert scaled_learning_rate(1e-3, 512) == pytest.approx(2e-3)
    assert scaled_learning_rate(1e-3, 128, reference_batch_size=128) == pytest.approx(1e-3)


def test_torch_backend_refuses_data_parallel_and_auto_falls_back():
    code = (
        "from keras_vit.distribute import configure_distribution\n"
        "from keras_vit.errors import KerasViTError\n"
        "d = configure_distribution('auto')\n"
        "print(d.mode, d.num_replicas, '|', d.describe())\n"
        "try:\n    configure_distribution('data-parallel')\n"
        "except KerasViTError as err:\n    print('ERROR', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, KERAS_BACKEND="torch"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == ("none 1 | single device (torch); no data parallelism on torch "
                         "(Keras supports it on jax and tensorflow)")
    assert lines[-1] == (
        "ERROR data-parallel training is not available on the torch backend: Keras 3 distributes fit only on "
        "JAX (keras.distribution) and TensorFlow (tf.distribute); set KERAS_BACKEND=jax or tensorflow."
    )


# --------------------------------------------------------------------------------------------------
# The worker (runs in a subprocess; the backend and device count are fixed before it starts)


def _worker(out: Path) -> None:
    backend = os.environ["KERAS_BACKEND"]
    devices = int(os.environ.get("KERAS_VIT_TEST_DEVICES", "2"))
    import tensorflow as tf

    if backend == "tensorflow":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    import keras

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import load_mnist_arrays

    import keras_vit
    from keras_vit.distribute import configure_distribution

    (x_train, y_train), _ = load_mnist_arrays()
    n = GLOBAL_BATCH * STEPS
    x = (x_train[:n].astype("float32")[..., None] / 255.0 - 0.1307) / 0.3081
    y = np.eye(10, dtype="float32")[y_train[:n]]
    clipnorm = 0.05

    def train(distribution):
        keras.utils.set_random_seed(0)
        with distribution.scope():
            model = keras_vit.create_model("vit_mnist", **MODEL_OPTIONS)
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.05, global_clipnorm=clipnorm)
            model.compile(optimizer=distribution.prepare_optimizer(optimizer),
                          loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
        means: list[float] = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: means.append(float(keras.ops.convert_to_numpy(logs["loss"]))))
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(distribution.global_batch_size(GLOBAL_BATCH))
        with distribution.scope():
            model.fit(data, epochs=1, verbose=0, callbacks=[record])
        # Keras logs the running mean over the epoch: recover each step's loss.
        steps = [means[0]] + [(k + 1) * means[k] - k * means[k - 1] for k in range(1, len(means))]
        return model, steps

    def grad_norms(model):  # the global gradient norm of each batch at the initial weights, for "was it clipped"
        return [float(np.sqrt(sum(float(np.sum(np.square(g))) for g in _gradients(model, xb, yb))))
                for xb, yb in zip(np.split(x, STEPS), np.split(y, STEPS), strict=True)]

    single = configure_distribution("none")
    model_1, losses_1 = train(single)
    parallel = configure_distribution("data-parallel", devices=devices)
    model_n, losses_n = train(parallel)

    result = {
        "backend": backend, "engine": parallel.engine, "num_replicas": parallel.num_replicas,
        "describe": parallel.describe(), "single_losses": losses_1, "parallel_losses": losses_n,
        "max_loss_diff": float(np.max(np.abs(np.subtract(losses_1, losses_n)))),
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(model_1.get_weights(),
                                                                            model_n.get_weights(), strict=True)),
    }
    variables = list(model_n.weights) + list(model_n.optimizer.variables)
    if backend == "jax":
        shards = [[np.asarray(s.data) for s in v.value.addressable_shards] for v in variables]
        result["replicas_per_variable"] = sorted({len(s) for s in shards})
        result["fully_replicated"] = all(v.value.sharding.is_fully_replicated for v in variables)
        result["devices_per_variable"] = sorted({len({s.device for s in v.value.addressable_shards})
                                                 for v in variables})
    else:
        values = [parallel.strategy.experimental_local_results(v.value) for v in variables]
        result["variable_types"] = sorted({type(v.value).__name__ for v in model_n.weights})
        result["replicas_per_variable"] = sorted({len(vals) for vals in values})
        shards = [[np.asarray(t) for t in vals] for vals in values]
        # Without the clipping fix: Keras' TensorFlow optimizer clips each replica's gradient before the sum.
        patched = [name for name in ("_clip_gradients", "_all_reduce_sum_gradients") if name in vars(model_n.optimizer)]
        result["optimizer_patched_after_scope"] = patched  # keras_vit.compat undoes its patch when scope() ends
        raw = _train_unpatched(parallel, x, y, clipnorm, keras, keras_vit, tf)
        result["unpatched_max_loss_diff"] = float(np.max(np.abs(np.subtract(losses_1, raw))))
    result["replica_spread"] = max(float(np.max(np.abs(s[i] - s[0]))) for s in shards for i in range(len(s)))

    keras.utils.set_random_seed(0)
    fresh = keras_vit.create_model("vit_mnist", **MODEL_OPTIONS)
    norms = grad_norms(fresh)
    result["initial_grad_norms"] = norms
    result["clipped_steps"] = int(sum(norm > clipnorm for norm in norms))

    images = x[:8]
    np.save(out / "images.npy", images)
    np.save(out / "logits.npy", keras.ops.convert_to_numpy(model_n(images, training=False)))
    model_n.save(out / "model.keras")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _gradients(model, images, labels):
    """Gradients of the training loss at the model's current weights (backend-specific on purpose)."""
    import keras

    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    if keras.backend.backend() == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(params):
            logits, _ = model.stateless_call(params, non_trainable, images, training=True)
            return loss_fn(labels, logits)

        return [np.asarray(g) for g in jax.grad(loss)(trainable)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = loss_fn(labels, model(images, training=True))
    return [g.numpy() for g in tape.gradient(value, model.trainable_variables)]


def _train_unpatched(parallel, x, y, clipnorm, keras, keras_vit, tf) -> list[float]:
    keras.utils.set_random_seed(0)
    with parallel.scope():
        model = keras_vit.create_model("vit_mnist", **MODEL_OPTIONS)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05, global_clipnorm=clipnorm),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    means: list[float] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: means.append(float(keras.ops.convert_to_numpy(logs["loss"]))))
    with parallel.scope():
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH), epochs=1, verbose=0,
                  callbacks=[record])
    return [means[0]] + [(k + 1) * means[k] - k * means[k - 1] for k in range(1, len(means))]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(Path(sys.argv[2]))
