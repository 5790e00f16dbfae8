"""Data-parallel training on the frameworks' own engines: one switch for every backend.

>>> from keras_vit.distribute import configure_distribution
>>> distribution = configure_distribution("auto")      # before anything else touches the backend
>>> with distribution.scope():                          # build and compile the model in the scope
...     model = keras_vit.create_model("vit_mnist")
>>> print(distribution.describe())

What each mode does, per Keras backend:

* **JAX** -- ``keras.distribution.DataParallel`` over ``keras.distribution.list_devices()`` (the first
  ``devices`` of them): variables are replicated on every device, each batch is sharded along its first
  axis and XLA inserts the gradient all-reduce. Several hosts: when ``KERAS_DISTRIBUTION_JOB_ADDRESSES``
  (the coordinator's ``host:port``, or every process's, comma-separated) and
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` are set, with ``KERAS_DISTRIBUTION_PROCESS_ID`` (0 .. N-1) on each
  process, ``keras.distribution.initialize()`` (that is ``jax.distributed.initialize``) runs first and
  the devices are those of every host. Process 0 is the chief. Every process takes part in every save
  (Keras' ``save`` runs collectives under the distribution); only the chief keeps the files.
* **TensorFlow** -- ``tf.distribute.MirroredStrategy`` over the GPUs of this host (or, without GPUs,
  its logical CPU devices). Keras' TensorFlow optimizer clips gradients before its cross-replica sum,
  so :meth:`Distribution.prepare_optimizer` moves the sum before the clipping: ``global_clipnorm``
  then sees the same global gradient as on one device. Several machines: when ``TF_CONFIG`` is set,
  ``tf.distribute.MultiWorkerMirroredStrategy`` (worker 0, or the ``chief`` task, is the chief).
  Keras 3's ``fit`` fails under that strategy as released (keras-team/keras#20585: its symbolic build
  ``reduce``s the first distributed batch, and its per-step metric ``MEAN`` reduces scalars along axis
  0); :mod:`keras_vit.compat` corrects both, for multi-worker strategies only. Every correction to Keras
  applies only inside :meth:`Distribution.scope` and is undone when the block ends.
* **PyTorch** -- Keras 3 has no distribution support for ``fit`` on the torch backend
  (``keras.distribution`` covers JAX, and ``tf.distribute`` is TensorFlow's; DistributedDataParallel
  needs a hand-written torch training loop, outside Keras' engine). ``"data-parallel"`` raises
  :class:`KerasViTError`; ``"auto"`` trains on one device and says so in :meth:`Distribution.describe`.

``"auto"`` is data-parallel when more than one accelerator (GPU/TPU) is visible, or when the multi-host
variables above are set; else ``"none"``.

Batch size and learning rate: the batch size the user gives is the **global** batch, split evenly over
the replicas (it must be a multiple of their number). The learning rate is kept as given: it belongs
to the global batch, which does not change with the number of devices, so ``--distribute`` changes
where the arithmetic runs, not the result (same batches, same steps, same loss curve up to float
rounding). Someone who raises ``--batch-size`` to fill more devices should scale the learning rate
with it; :func:`scaled_learning_rate` is the linear rule (``lr * batch / reference``).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras

from keras_vit import compat
from keras_vit.errors import KerasViTError, UserInputError
from keras_vit.options import DISTRIBUTE_MODES as MODES  # ``--distribute`` values

#: Environment variables that make the JAX backend start ``jax.distributed`` (see ``keras.distribution.initialize``).
JAX_MULTIHOST_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)

_jax_initialized = False
_configured: dict[tuple, Distribution] = {}


@dataclass
class Distribution:
    """How (and where) ``fit`` runs. Build with :func:`configure_distribution`.

    Attributes:
        mode: ``"none"`` or ``"data-parallel"`` (``"auto"`` resolved).
        backend: the Keras backend.
        engine: what does the work, e.g. ``"keras.distribution.DataParallel"``.
        devices: the devices holding a replica (global, across hosts).
        num_workers: processes (hosts) taking part; 1 on one machine.
        worker_index: this process's index among them; 0 is the chief.
        notes: remarks for the user (e.g. why ``auto`` chose one device).
    """

    mode: str
    backend: str
    engine: str
    devices: list[str]
    num_workers: int = 1
    worker_index: int = 0
    notes: list[str] = field(default_factory=list)
    strategy: Any = field(default=None, repr=False)  # keras.distribution.Distribution or tf.distribute.Strategy
    _optimizers: list = field(default_factory=list, repr=False)  # weak references, for scope()'s corrections
    _models: list = field(default_factory=list, repr=False)

    @property
    def num_replicas(self) -> int:
        """How many copies of the model train in step (1 without data parallelism)."""
        return max(len(self.devices), 1) if self.mode == "data-parallel" else 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints, history and the final model."""
        return self.worker_index == 0

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build, compile, ``fit`` and ``predict`` inside this block (a new context each call).

        Inside it, and only there, the Keras corrections of :mod:`keras_vit.compat` apply to the optimizers
        and models passed to :meth:`prepare_optimizer` and :meth:`prepare_model`; they are undone on exit.
        """
        if self.strategy is None:
            yield
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.strategy.scope())
            for optimizer in _alive(self._optimizers):
                stack.enter_context(compat.clip_after_all_reduce(optimizer))
            if self.engine == "tf.distribute.MultiWorkerMirroredStrategy":
                stack.enter_context(compat.multi_worker_reduce())
                for model in _alive(self._models):
                    stack.enter_context(compat.multi_worker_build(model, self.strategy))
            yield

    def global_batch_size(self, batch_size: int) -> int:
        """The global batch for a requested ``batch_size`` (itself), checked to split evenly over replicas."""
        batch_size = int(batch_size)
        if batch_size % self.num_replicas:
            raise UserInputError(
                f"Batch size {batch_size} does not split evenly over {self.num_replicas} replicas; use a "
                f"multiple of {self.num_replicas} (the batch size is the global batch, shared by all devices)."
            )
        return batch_size

    def per_replica_batch_size(self, batch_size: int) -> int:
        """Images each replica sees per step."""
        return self.global_batch_size(batch_size) // self.num_replicas

    def prepare_optimizer(self, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        """Make gradient clipping see the global gradient under ``tf.distribute`` (returns ``optimizer``).

        Keras' TensorFlow optimizer clips each replica's gradient, then sums them across replicas;
        inside :meth:`scope` this one sums first (the same all-reduce, moved) and clips the sum, as one
        device would (:func:`keras_vit.compat.clip_after_all_reduce`). JAX already clips the global
        gradient; other cases are returned untouched.
        """
        if self.backend != "tensorflow" or self.mode != "data-parallel" or self.num_replicas < 2:
            return optimizer
        compat.check_optimizer_hooks(optimizer)
        if not any(o is optimizer for o in _alive(self._optimizers)):
            self._optimizers.append(weakref.ref(optimizer))
        return optimizer

    def prepare_model(self, model: keras.Model) -> keras.Model:
        """Let Keras' ``fit`` build ``model`` under ``MultiWorkerMirroredStrategy`` (returns ``model``).

        Keras 3.15 builds a model's optimizer and metrics from ``strategy.reduce("MEAN", first_batch)``,
        which fails for the per-replica batches of a multi-worker strategy; this builds them from this
        worker's first replica's batch instead (only the shapes matter), inside :meth:`scope`
        (:func:`keras_vit.compat.multi_worker_build`). Other cases: untouched.
        """
        if self.engine == "tf.distribute.MultiWorkerMirroredStrategy":
            compat.check_trainer_hooks(model)
            if not any(m is model for m in _alive(self._models)):
                self._models.append(weakref.ref(model))
        return model

    @property
    def needs_full_batches(self) -> bool:
        """JAX shards every batch (train, validation, predict) evenly: a last partial batch cannot run."""
        return self.backend == "jax" and self.mode == "data-parallel" and self.num_replicas > 1

    def full_batches(self, data: Any, batch_size: int) -> Any:
        """``data`` (a batched ``tf.data.Dataset`` or a ``keras.utils.PyDataset``) without its last partial
        batch where :attr:`needs_full_batches`; unchanged otherwise. At most ``batch_size - 1`` images
        per epoch are skipped (different ones each epoch when the data is reshuffled). Build the
        optimizer, compile and fit inside :meth:`scope`; predict/evaluate outside it (any batch size)."""
        if not self.needs_full_batches or data is None:
            return data
        return drop_partial_batches(data, self.global_batch_size(batch_size))

    def check_model(self, model: keras.Model) -> None:
        """Raise :class:`UserInputError` if ``model``'s variables were not created in :meth:`scope`."""
        if self.mode != "data-parallel" or self.num_replicas < 2 or not model.weights:
            return
        value = model.weights[0].value
        if self.backend == "jax":
            inside = len(getattr(getattr(value, "sharding", None), "device_set", ())) == self.num_replicas
        else:
            inside = self.strategy.extended.variable_created_in_scope(value)
        if not inside:
            raise UserInputError(
                f"the model was built outside the data-parallel scope; create (or load) it inside "
                f"`with distribution.scope():` of the same keras_vit.distribute.configure_distribution({self.mode!r})."
            )

    def describe(self) -> str:
        """One line, e.g. ``"data-parallel over 2 devices (cpu:0, cpu:1) with keras.distribution.DataParallel"``."""
        if self.mode == "none":
            text = f"single device ({self.backend})"
        else:
            shown = ", ".join(self.devices[:8]) + (", ..." if len(self.devices) > 8 else "")
            text = f"data-parallel over {self.num_replicas} devices ({shown}) with {self.engine}"
            if self.num_workers > 1:
                text += f", {self.num_workers} workers (this is worker {self.worker_index})"
        return text + "".join(f"; {note}" for note in self.notes)


def scaled_learning_rate(learning_rate: float, global_batch_size: int, reference_batch_size: int = 256) -> float:
    """The linear scaling rule: ``learning_rate * global_batch_size / reference_batch_size``.

    Not applied automatically (see the module docstring); for people who grow the batch with the devices.
    """
    return float(learning_rate) * int(global_batch_size) / int(reference_batch_size)


def drop_partial_batches(data: Any, batch_size: int) -> Any:
    """A view of batched ``data`` (``tf.data.Dataset`` or ``keras.utils.PyDataset``) with only full batches."""
    if isinstance(data, keras.utils.PyDataset):
        return _FullBatches(data, int(batch_size))
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        # rebatch (not filter): the static batch size it gives is what keras.distribution needs to
        # split a tf.data pipeline between the processes of a multi-host JAX run.
        return data.rebatch(int(batch_size), drop_remainder=True)
    raise TypeError(f"expected a tf.data.Dataset or keras.utils.PyDataset, got {type(data).__name__}")


class _FullBatches(keras.utils.PyDataset):
    """The full batches of a PyDataset whose batches are all ``batch_size`` long except the last."""

    def __init__(self, inner: keras.utils.PyDataset, batch_size: int):
        super().__init__()
        self.inner, self.batch_size = inner, batch_size
        if hasattr(inner, "x"):  # keras_vit.training.ArrayBatches: rows known without building a batch
            self._count = len(inner.x) // batch_size
        else:
            last = inner[len(inner) - 1][0] if len(inner) else None
            self._count = len(inner) - (1 if last is not None and len(last) != batch_size else 0)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int):
        return self.inner[index]

    def on_epoch_end(self) -> None:
        self.inner.on_epoch_end()


def configure_distribution(mode: str | Distribution = "auto", devices: int | None = None) -> Distribution:
    """Choose how ``fit`` spreads over the visible devices; call it before the backend does any work.

    Args:
        mode: ``"auto"`` (data-parallel when more than one accelerator is visible or multi-host
            variables are set), ``"none"`` (one device, Keras' default placement) or ``"data-parallel"``.
        devices: use only the first ``devices`` devices (one host only); ``None`` uses all.

    The same arguments return the same :class:`Distribution` for the life of the process (a model built
    in its scope can then be handed to :func:`keras_vit.training.fit` with ``distribute=mode``); a
    :class:`Distribution` passed as ``mode`` is returned as is.

    Raises:
        UserInputError: unknown mode, bad device count, batch rules the user can fix.
        KerasViTError: data parallelism requested where Keras cannot provide it (PyTorch backend).
    """
    if isinstance(mode, Distribution):
        return mode
    if mode not in MODES:
        raise UserInputError(f"Unknown distribute mode {mode!r}; use one of {', '.join(MODES)}.")
    if devices is not None and int(devices) < 1:
        raise UserInputError(f"--devices must be at least 1, got {devices}.")
    backend = keras.backend.backend()
    key = (backend, mode, None if devices is None else int(devices))
    if key not in _configured:  # one strategy per process: the model's variables belong to it
        _configured[key] = _configure(backend, mode, devices)
    return _configured[key]


def _configure(backend: str, mode: str, devices: int | None) -> Distribution:
    if backend == "jax":
        return _configure_jax(mode, devices)
    if backend == "tensorflow":
        return _configure_tensorflow(mode, devices)
    message = (f"data-parallel training is not available on the {backend} backend: Keras 3 distributes fit "
               "only on JAX (keras.distribution) and TensorFlow (tf.distribute); set KERAS_BACKEND=jax or "
               "tensorflow.")
    if mode == "data-parallel":
        raise KerasViTError(message)
    notes = [f"no data parallelism on {backend} (Keras supports it on jax and tensorflow)"] if mode == "auto" else []
    return Distribution(mode="none", backend=backend, engine="single device", devices=[], notes=notes)


# --------------------------------------------------------------------------------------------------
# JAX: keras.distribution


def _jax_multihost_requested() -> bool:
    return any(os.environ.get(name) for name in JAX_MULTIHOST_VARIABLES[:2])


def _configure_jax(mode: str, devices: int | None) -> Distribution:
    global _jax_initialized
    multihost = _jax_multihost_requested()
    if mode == "none":
        return Distribution(mode="none", backend="jax", engine="single device", devices=[])
    if multihost and not _jax_initialized:
        try:
            keras.distribution.initialize()
        except Exception as err:
            raise KerasViTError(
                f"could not join the multi-host JAX job ({type(err).__name__}: {err}); check "
                f"{', '.join(JAX_MULTIHOST_VARIABLES)} and that the coordinator is reachable."
            ) from err
        _jax_initialized = True
    import jax

    available = keras.distribution.list_devices()  # accelerators if any, else CPUs; global across hosts
    accelerators = [d for d in available if not d.startswith("cpu")]
    if mode == "auto" and len(accelerators) < 2 and jax.process_count() == 1:
        return Distribution(mode="none", backend="jax", engine="single device", devices=[],
                            notes=[] if devices is None else ["--devices ignored: fewer than 2 accelerators"])
    chosen = _first(available, devices, multihost=jax.process_count() > 1)
    strategy = keras.distribution.DataParallel(devices=chosen)
    return Distribution(mode="data-parallel", backend="jax", engine="keras.distribution.DataParallel",
                        devices=chosen, num_workers=jax.process_count(), worker_index=jax.process_index(),
                        strategy=strategy)


# --------------------------------------------------------------------------------------------------
# TensorFlow: tf.distribute


def _configure_tensorflow(mode: str, devices: int | None) -> Distribution:
    import tensorflow as tf

    tf_config = os.environ.get("TF_CONFIG")
    if mode == "none":
        return Distribution(mode="none", backend="tensorflow", engine="single device", devices=[])
    if tf_config:
        return _configure_multi_worker(devices)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if mode == "auto" and len(gpus) < 2:
        return Distribution(mode="none", backend="tensorflow", engine="single device", devices=[],
                            notes=[] if devices is None else ["--devices ignored: fewer than 2 GPUs"])
    available = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    chosen = _first(available, devices, multihost=False)
    strategy = tf.distribute.MirroredStrategy(devices=chosen)
    return Distribution(mode="data-parallel", backend="tensorflow", engine="tf.distribute.MirroredStrategy",
                        devices=[_short(d) for d in chosen], strategy=strategy)


def _configure_multi_worker(devices: int | None) -> Distribution:
    """``MultiWorkerMirroredStrategy`` over the ``TF_CONFIG`` cluster (every worker's devices)."""
    import tensorflow as tf

    if devices is not None:
        raise UserInputError("--devices applies to one machine; with TF_CONFIG every device of every worker is used.")
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except Exception as err:
        raise KerasViTError(
            f"could not join the TF_CONFIG cluster ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "check TF_CONFIG's addresses and that every worker is started."
        ) from err
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec()
    has_chief = "chief" in spec.jobs
    num_workers = spec.num_tasks("worker") + (spec.num_tasks("chief") if has_chief else 0)
    index = int(resolver.task_id or 0)
    worker_index = 0 if resolver.task_type == "chief" else index + (1 if has_chief else 0)
    local = [_short(d) for d in strategy.extended.worker_devices]
    names = [f"worker{w}/{d}" for w in range(num_workers) for d in local]  # the strategy needs equal workers
    return Distribution(mode="data-parallel", backend="tensorflow", engine="tf.distribute.MultiWorkerMirroredStrategy",
                        devices=names, num_workers=num_workers, worker_index=worker_index, strategy=strategy)


# --------------------------------------------------------------------------------------------------
# Helpers


def _alive(references: list) -> list:
    """The objects behind ``references`` (weak references) that still exist."""
    return [obj for obj in (ref() for ref in references) if obj is not None]


def _first(available: list[str], devices: int | None, multihost: bool) -> list[str]:
    if devices is None:
        return list(available)
    if multihost:
        raise UserInputError("--devices applies to one machine; on several hosts every device of every host is used.")
    if int(devices) > len(available):
        raise UserInputError(
            f"--devices {devices} asks for more devices than the {len(available)} visible "
            f"({', '.join(_short(d) for d in available)})."
        )
    return list(available[: int(devices)])


def _short(name: str) -> str:
    """``/job:localhost/replica:0/task:0/device:GPU:1`` -> ``gpu:1``."""
    parts = name.split("device:")[-1].split(":")
    return f"{parts[0].lower()}:{parts[-1]}" if len(parts) >= 2 else name
