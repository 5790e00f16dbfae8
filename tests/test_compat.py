"""keras_vit.compat: each Keras correction applies only inside its block, is undone after, and is version-gated."""

from __future__ import annotations

import types

import keras
import pytest

from keras_vit import compat

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the corrections are to Keras' TensorFlow trainer")


def test_versions_gate_each_fix():
    assert compat.keras_version("3.15.1") == (3, 15, 1) and compat.keras_version("3.16.0rc1") == (3, 16, 0)
    fix = compat.KerasFix("demo", "keras-team/keras#1", since=(3, 0), fixed_in=(3, 16))
    assert fix.needed((3, 0, 0)) and fix.needed((3, 15, 1))
    assert not fix.needed((3, 16, 0)) and not fix.needed((2, 15, 0))
    assert compat.MULTI_WORKER_FIT.upstream == "keras-team/keras#20585"
    assert compat.MULTI_WORKER_FIT.needed() and compat.CLIP_AFTER_ALL_REDUCE.needed()  # Keras 3.15.x has both


def test_patched_restores_module_attributes_and_instance_methods_and_nests():
    module = types.SimpleNamespace(f=lambda: "keras")
    original = module.f
    with compat.patched(module, "f", lambda old: lambda: "fixed " + old()):
        assert module.f() == "fixed keras"
        with compat.patched(module, "f", lambda old: lambda: "twice"):
            assert module.f() == "fixed keras"  # re-entrant: not patched twice
        assert module.f() == "fixed keras"  # the inner block undid nothing
    assert module.f is original

    class Thing:
        def method(self):
            return "class"

    thing = Thing()
    with compat.patched(thing, "method", lambda old: lambda: "instance"):
        assert thing.method() == "instance"
    assert "method" not in vars(thing) and thing.method() == "class"
    with pytest.raises(RuntimeError), compat.patched(thing, "method", lambda old: lambda: "instance"):
        raise RuntimeError("an error inside the block")
    assert "method" not in vars(thing)


def test_clip_after_all_reduce_only_inside_the_block():
    optimizer = keras.optimizers.AdamW(1e-3, global_clipnorm=1.0)
    with compat.clip_after_all_reduce(optimizer):
        assert {"_clip_gradients", "_all_reduce_sum_gradients"} <= set(vars(optimizer))
        grads = [tf.constant([3.0, 4.0])]
        assert float(tf.norm(optimizer._clip_gradients(grads)[0])) == pytest.approx(1.0)  # no replicas: plain clip
    assert not {"_clip_gradients", "_all_reduce_sum_gradients"} & set(vars(optimizer))


def test_multi_worker_fit_only_inside_the_block():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    import keras_vit

    original = tf_trainer.reduce_per_replica
    model = keras_vit.create_model("vit_mnist", depth=1)
    strategy = tf.distribute.get_strategy()
    with compat.multi_worker_reduce(), compat.multi_worker_build(model, strategy):
        assert tf_trainer.reduce_per_replica is not original
        assert "_maybe_symbolic_build" in vars(model)
        with compat.multi_worker_reduce():
            pass
        assert tf_trainer.reduce_per_replica is not original
    assert tf_trainer.reduce_per_replica is original
    assert "_maybe_symbolic_build" not in vars(model)


def test_distribution_scope_applies_and_undoes_the_clipping_fix():
    from keras_vit.distribute import Distribution

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    distribution = Distribution(mode="data-parallel", backend="tensorflow", engine="tf.distribute.MirroredStrategy",
                                devices=["cpu:0", "cpu:1"], strategy=strategy)
    optimizer = keras.optimizers.AdamW(1e-3, global_clipnorm=1.0)
    assert distribution.prepare_optimizer(optimizer) is optimizer
    assert "_clip_gradients" not in vars(optimizer)  # nothing changes before the scope
    with distribution.scope():
        assert "_clip_gradients" in vars(optimizer)
    assert "_clip_gradients" not in vars(optimizer)
    other = keras.optimizers.AdamW(1e-3)
    with distribution.scope():
        assert "_clip_gradients" not in vars(other)  # only the prepared optimizer
