"""Keras' AdamW, with a learning-rate schedule evaluated once per step instead of once per decayed variable.

Keras 3.15's AdamW reads `learning_rate` for each weight-decayed variable, and with a `LearningRateSchedule` each
read evaluates the schedule again: one copy of the warm-up cosine per decayed variable in every traced train step,
which the first step pays for in tracing and graph optimisation (benchmarks/first_step_schedule.py; figures in
benchmarks/RESULTS.md). This class takes the rate once when `apply` starts and serves it until `apply` returns.
The step counter only moves at the end of `apply`, so every read sees the value Keras' own AdamW would compute: the
same updates from a smaller graph.

It is registered as `keras_cmt>AdamW`, so a compiled model saved with it reloads wherever keras_cmt is imported (as
it must be for CMT's layers anyway).
"""

import threading

import keras

_KERAS_LEARNING_RATE = keras.optimizers.AdamW.learning_rate
# The class `keras.optimizers.AdamW(...)` instantiates on this backend (allocating nothing): on PyTorch that is Keras'
# multi-tensor AdamW, which a plain subclass of `keras.optimizers.AdamW` would lose.
_BACKEND_ADAMW = type(keras.optimizers.AdamW.__new__(keras.optimizers.AdamW))


@keras.saving.register_keras_serializable(package="keras_cmt")
class AdamW(_BACKEND_ADAMW):
    """`keras.optimizers.AdamW` with the same arguments and updates; its schedule runs once per `apply`."""

    @property
    def _step_rates(self):
        # Keyed by thread: MirroredStrategy traces each replica in its own thread. Kept out of TensorFlow's
        # attribute tracking, which would wrap a dict set the usual way.
        return self.__dict__.setdefault("_keras_cmt_step_rates", {})

    @property
    def learning_rate(self):
        rate = self._step_rates.get(threading.get_ident())
        return _KERAS_LEARNING_RATE.fget(self) if rate is None else rate

    @learning_rate.setter
    def learning_rate(self, value):
        _KERAS_LEARNING_RATE.fset(self, value)

    def apply(self, grads, trainable_variables=None):
        thread = threading.get_ident()
        self._step_rates[thread] = _KERAS_LEARNING_RATE.fget(self)
        try:
            return super().apply(grads, trainable_variables)
        finally:
            del self._step_rates[thread]
