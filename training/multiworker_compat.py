"""Makes `model.fit` work under MultiWorkerMirroredStrategy with Keras 3.15 / TensorFlow 2.21.

Upstream bug (keras-team/keras#20585, tensorflow/tensorflow#72388), in `keras/src/backend/tensorflow/trainer.py`:

1. `TensorFlowTrainer._maybe_symbolic_build` reduces the first distributed batch with
   `strategy.reduce("MEAN", batch, axis=None)` only to get a batch of the right structure for the symbolic build.
   The collective strategy rejects that eagerly: "Attempt to convert a value (PerReplica...) ...".
   Fix: under a multi-worker strategy, build from this worker's first local replica batch.
2. `reduce_per_replica` reduces the scalar step logs (loss, metrics) with `strategy.reduce("MEAN", v, axis=0)`:
   "Invalid reduction dimension 0 for input with 0 dimensions". Fix: `axis=None` for scalar per-replica values.

Both replacements delegate to the original Keras code unless the strategy is a MultiWorkerMirroredStrategy in
multi-worker mode, so nothing changes for the default, Mirrored or TPU strategies. `apply()` installs them only
while `bug_present()` finds the faulty code, and `tests/test_training_multiworker.py` fails when an upgrade of Keras
fixes the bug (this module can then go) or changes the code so that the fix no longer applies.
"""

import inspect

import tensorflow as tf
from absl import logging
from keras import tree
from keras.src.backend.tensorflow import trainer as _tf_trainer

_ORIGINAL_REDUCE_PER_REPLICA = _tf_trainer.reduce_per_replica
_ORIGINAL_MAYBE_SYMBOLIC_BUILD = _tf_trainer.TensorFlowTrainer._maybe_symbolic_build

# The exact faulty statements in Keras 3.15.1 (whitespace removed before matching).
_BUILD_SIGNATURE = 'data_batch=self.distribute_strategy.reduce("MEAN",maybe_distributed_data_batch,axis=None,)'
_REDUCE_SIGNATURE = 'returnstrategy.reduce("MEAN",v,axis=0)'


def _squash(source):
    return "".join(source.split())


def bug_present():
    """Which of the two faulty statements the installed Keras still contains:
    {'symbolic_build': bool, 'reduce': bool}."""
    return {
        "symbolic_build": _BUILD_SIGNATURE in _squash(inspect.getsource(_ORIGINAL_MAYBE_SYMBOLIC_BUILD)),
        "reduce": _REDUCE_SIGNATURE in _squash(inspect.getsource(_ORIGINAL_REDUCE_PER_REPLICA)),
    }


def is_multi_worker(strategy):
    """True for a MultiWorkerMirroredStrategy that spans several workers (Keras' own test)."""
    return strategy is not None and _tf_trainer._collective_all_reduce_multi_worker(strategy)


def reduce_per_replica(values, strategy, reduction):
    """Keras' `reduce_per_replica`, except scalar logs of a multi-worker strategy are all-reduced with axis=None."""
    if not is_multi_worker(strategy):
        return _ORIGINAL_REDUCE_PER_REPLICA(values, strategy, reduction)
    mean = reduction == "mean" or (reduction == "auto" and not isinstance(strategy, tf.distribute.TPUStrategy))

    def _reduce(v):
        # With one replica per worker, `strategy.run` hands back plain tensors; several give PerReplica values.
        local = strategy.experimental_local_results(v) if isinstance(v, tf.distribute.DistributedValues) else (v,)
        if mean and local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
            return strategy.reduce("MEAN", v, axis=None)
        return _ORIGINAL_REDUCE_PER_REPLICA(v, strategy, reduction)

    return tree.map_structure(_reduce, values)


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Keras' `_maybe_symbolic_build`, except a multi-worker strategy builds from the first local replica's batch."""
    strategy = self._distribute_strategy
    if iterator is None or not is_multi_worker(strategy):
        return _ORIGINAL_MAYBE_SYMBOLIC_BUILD(self, iterator=iterator, data_batch=data_batch)
    for _, _, it in iterator:
        batch = next(it)
        if all(isinstance(x, tf.distribute.DistributedValues) for x in tree.flatten(batch)):
            batch = tree.map_structure(lambda x: strategy.experimental_local_results(x)[0], batch)
        data_batch = batch
        break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def is_applied():
    return (
        _tf_trainer.reduce_per_replica is reduce_per_replica
        and _tf_trainer.TensorFlowTrainer._maybe_symbolic_build is _maybe_symbolic_build
    )


def apply():
    """Installs both replacements (idempotent). Returns False, and logs why, when the installed Keras lacks the bug."""
    present = bug_present()
    if not all(present.values()):
        logging.warning(
            "multiworker_compat: Keras no longer contains the faulty code (%s); not patching. If "
            "multi-worker fit works unpatched, delete training/multiworker_compat.py.",
            present,
        )
        return False
    _tf_trainer.reduce_per_replica = reduce_per_replica
    _tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    return True


def remove():
    """Restores Keras' original functions."""
    _tf_trainer.reduce_per_replica = _ORIGINAL_REDUCE_PER_REPLICA
    _tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _ORIGINAL_MAYBE_SYMBOLIC_BUILD
