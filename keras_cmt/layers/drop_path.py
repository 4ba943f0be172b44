"""Stochastic depth ("drop path"): drops a whole residual branch per sample while training.

Keras has no built-in per-sample branch dropout, and the official CMT recipe relies on it (drop_path_rate), so it
is written here once. At inference it is the identity, so it never affects parity.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cmt")
class DropPath(keras.layers.Layer):
    """Zeroes the input for a random subset of samples and rescales the rest by 1 / (1 - rate) in training."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype) < keep
        return ops.where(mask, inputs / ops.cast(keep, inputs.dtype), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
