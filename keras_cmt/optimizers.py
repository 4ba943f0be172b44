"""Keras' AdamW, with what is the same for every variable of a step computed once per step.

Keras 3.15's AdamW reads `learning_rate` for each weight-decayed variable, and with a `LearningRateSchedule` each
read evaluates the schedule again: one copy of the warm-up cosine per decayed variable in every traced train step.
Its update of each variable also computes the step's bias correction (two powers of the betas and the corrected
rate) again. The first step pays for both in tracing and graph optimisation (benchmarks/first_step_schedule.py;
figures in benchmarks/RESULTS.md). This class takes the rate, and the corrected rate per variable dtype, once when
`apply` starts and serves them until `apply` returns. The step counter only moves at the end of `apply`, so every
read sees the value Keras' own AdamW would compute: the same updates from a smaller graph.

It is registered as `keras_cmt>AdamW`, so a compiled model saved with it reloads wherever keras_cmt is imported (as
it must be for CMT's layers anyway).
"""

import threading

import keras
from keras import ops

_KERAS_LEARNING_RATE = keras.optimizers.AdamW.learning_rate
# The class `keras.optimizers.AdamW(...)` instantiates on this backend (allocating nothing): on PyTorch that is Keras'
# multi-tensor AdamW, which a plain subclass of `keras.optimizers.AdamW` would lose.
_BACKEND_ADAMW = type(keras.optimizers.AdamW.__new__(keras.optimizers.AdamW))


@keras.saving.register_keras_serializable(package="keras_cmt")
class AdamW(_BACKEND_ADAMW):
    """`keras.optimizers.AdamW` with the same arguments and updates; its schedule and bias correction run once per
    `apply`."""

    @property
    def _step_values(self):
        # Per thread (MirroredStrategy traces each replica in its own thread; its merged updates run in another,
        # which finds nothing here and computes the values itself), the step's values while `apply` runs. Kept out
        # of TensorFlow's attribute tracking, which would wrap a dict set the usual way.
        return self.__dict__.setdefault("_keras_cmt_step_values", {})

    @property
    def learning_rate(self):
        step = self._step_values.get(threading.get_ident())
        return _KERAS_LEARNING_RATE.fget(self) if step is None else step["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value):
        _KERAS_LEARNING_RATE.fset(self, value)

    def apply(self, grads, trainable_variables=None):
        thread = threading.get_ident()
        self._step_values[thread] = {"learning_rate": _KERAS_LEARNING_RATE.fget(self)}
        try:
            return super().apply(grads, trainable_variables)
        finally:
            del self._step_values[thread]

    def _corrected_rate(self, learning_rate, dtype):
        """Adam's bias-corrected step size at this step, as Keras' `Adam.update_step` computes it."""
        step = self._step_values.get(threading.get_ident())
        key = ("corrected_rate", dtype)
        if step is not None and key in step:
            return step[key]
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        rate = ops.cast(learning_rate, dtype) * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        if step is not None:
            step[key] = rate
        return rate

    def update_step(self, gradient, variable, learning_rate):
        """Keras' `Adam.update_step` (which PyTorch's multi-tensor AdamW does not call), with the step size shared
        by the step's variables."""
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        gradient = ops.cast(gradient, variable.dtype)
        alpha = self._corrected_rate(learning_rate, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))
