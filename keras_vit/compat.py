"""Corrections to Keras internals, in one place: each gated on the Keras versions that need it, applied
only inside a ``with`` block, and undone when the block ends.

keras-vit patches Keras in two places, both for ``tf.distribute`` data parallelism on the TensorFlow
backend (:mod:`keras_vit.distribute` enters these blocks in ``Distribution.scope()``):

* :func:`clip_after_all_reduce` -- Keras' TensorFlow optimizer clips each replica's gradient
  (``BaseOptimizer.apply`` -> ``_clip_gradients``), then sums the replicas' gradients
  (``TFOptimizer._backend_update_step`` -> ``_all_reduce_sum_gradients``), so ``global_clipnorm``
  bounds each replica's share rather than the global gradient. Inside the block, the optimizer sums
  first and clips the sum, as on one device. Read in Keras 3.15.1's source; no upstream issue filed.
* :func:`multi_worker_fit` -- keras-team/keras#20585: under ``MultiWorkerMirroredStrategy``, Keras 3's
  ``fit`` fails twice: ``_maybe_symbolic_build`` builds the optimizer and metrics from
  ``strategy.reduce("MEAN", first_batch)`` of the distributed batch, and ``reduce_per_replica``
  reduces each step's scalar logs with ``strategy.reduce("MEAN", value, axis=0)`` ("Invalid reduction
  dimension 0 for input with 0 dimensions"). Inside the block, the model builds from this worker's first
  replica's batch (only shapes matter) and scalar logs are averaged with ``axis=None``.

Both behaviours are in every Keras 3 release up to 3.15.1, the newest checked
(``keras/src/backend/tensorflow/trainer.py``, ``keras/src/optimizers/base_optimizer.py``); when a release
fixes one, set its ``fixed_in`` below and the patch stops applying there.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

from keras_vit.errors import KerasViTError

_MARK = "_keras_vit_compat"


def keras_version(version: str | None = None) -> tuple[int, ...]:
    """``"3.15.1"`` -> ``(3, 15, 1)`` (pre-release suffixes dropped); the installed Keras by default."""
    parts = [re.match(r"\d*", part).group() or "0" for part in (version or keras.version()).split(".")[:3]]
    return tuple(int(part) for part in parts)


@dataclass(frozen=True)
class KerasFix:
    """A correction to Keras and the versions that need it: ``since <= version < fixed_in``."""

    name: str
    upstream: str
    since: tuple[int, ...]
    fixed_in: tuple[int, ...] | None = None

    def needed(self, version: tuple[int, ...] | None = None) -> bool:
        version = version or keras_version()
        return self.since <= version and (self.fixed_in is None or version < self.fixed_in)


MULTI_WORKER_FIT = KerasFix("fit under MultiWorkerMirroredStrategy", "keras-team/keras#20585", since=(3, 0))
CLIP_AFTER_ALL_REDUCE = KerasFix("clip the global gradient under tf.distribute", "none filed", since=(3, 0))

MISSING_HOOKS = ("this Keras version lacks the trainer functions keras-vit corrects for "
                 "tf.distribute.MultiWorkerMirroredStrategy; train on several machines with KERAS_BACKEND=jax.")
MISSING_OPTIMIZER_HOOKS = ("this Keras version's TensorFlow optimizer lacks the hooks keras-vit uses to clip the "
                           "global gradient under tf.distribute; train with --distribute none or another Keras "
                           "backend.")


@contextlib.contextmanager
def patched(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """``owner.name = make(current)`` inside the block; the previous state (attribute or none) after it.

    Re-entrant: inside an enclosing block on the same attribute, nothing more is patched or undone.
    """
    current = getattr(owner, name)
    if getattr(current, _MARK, False):
        yield
        return
    had_own = isinstance(owner, type) or name in vars(owner)
    replacement = make(current)
    setattr(replacement, _MARK, True)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, current)
        else:
            delattr(owner, name)  # the instance goes back to its class's method


def check_optimizer_hooks(optimizer: keras.optimizers.Optimizer) -> None:
    """Raise :class:`KerasViTError` if ``optimizer`` lacks what :func:`clip_after_all_reduce` replaces."""
    if not (hasattr(optimizer, "_clip_gradients") and hasattr(optimizer, "_all_reduce_sum_gradients")):
        raise KerasViTError(MISSING_OPTIMIZER_HOOKS)


def check_trainer_hooks(model: keras.Model) -> None:
    """Raise :class:`KerasViTError` if Keras lacks what :func:`multi_worker_fit` replaces."""
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError as err:
        raise KerasViTError(MISSING_HOOKS) from err
    if not (hasattr(model, "_symbolic_build") and hasattr(model, "_maybe_symbolic_build")
            and hasattr(tf_trainer, "reduce_per_replica")):
        raise KerasViTError(MISSING_HOOKS)


@contextlib.contextmanager
def clip_after_all_reduce(optimizer: keras.optimizers.Optimizer) -> Iterator[None]:
    """Inside the block, ``optimizer`` all-reduces (SUM) the replicas' gradients, then clips the sum."""
    if not CLIP_AFTER_ALL_REDUCE.needed():
        yield
        return
    import tensorflow as tf

    check_optimizer_hooks(optimizer)

    def sum_then_clip(clip):
        def clip_gradients(grads):
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                present = [g for g in grads if g is not None]
                summed = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else [])
                grads = [None if g is None else next(summed) for g in grads]
            return clip(grads)

        return clip_gradients

    with patched(optimizer, "_clip_gradients", sum_then_clip), \
            patched(optimizer, "_all_reduce_sum_gradients", lambda _: lambda grads_and_vars: list(grads_and_vars)):
        yield


@contextlib.contextmanager
def multi_worker_reduce() -> Iterator[None]:
    """Inside the block, Keras' per-step ``reduce_per_replica`` averages scalar logs of a multi-worker
    strategy with ``axis=None`` (a worker with one replica gets plain tensors: kept as they are); every
    other call goes to Keras' own function."""
    if not MULTI_WORKER_FIT.needed():
        yield
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def wrap(original):
        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
                def mean(value):
                    if isinstance(value, tf.distribute.DistributedValues):
                        if value.values[0].shape.rank == 0:
                            return strategy.reduce("MEAN", value, axis=None)
                    elif getattr(value, "shape", None) is not None and value.shape.rank == 0:
                        return value  # one replica on this worker: a plain tensor, already synchronised
                    return original(value, strategy, reduction)

                return tf.nest.map_structure(mean, values)
            return original(values, strategy, reduction)

        return reduce_per_replica

    with patched(tf_trainer, "reduce_per_replica", wrap):
        yield


@contextlib.contextmanager
def multi_worker_build(model: keras.Model, strategy: Any) -> Iterator[None]:
    """Inside the block, ``fit`` builds ``model`` from this worker's first replica's batch."""
    if not MULTI_WORKER_FIT.needed():
        yield
        return
    import tensorflow as tf

    check_trainer_hooks(model)

    def build_from_local_batch(_original):
        def maybe_symbolic_build(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, it in iterator:
                    batch = next(it)
                    data_batch = tf.nest.map_structure(
                        lambda v: strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        return maybe_symbolic_build

    with patched(model, "_maybe_symbolic_build", build_from_local_batch):
        yield
