"""BatchNormalization whose training step takes fewer passes over the activations on TensorFlow.

Keras' training-mode BatchNorm is a chain of element-wise ops (moments, then scale and shift), and TensorFlow
differentiates each of them: about a dozen full passes over the tensor per layer in the backward, which is where
a CPU training step of CMT spends much of its time (benchmarks/RESULTS.md). Here the forward is y = a x + b with
per-channel a, b, and the gradient is the closed form

    dbeta = sum(dy),  dgamma = inv * (sum(dy x) - mean sum(dy)),  dx = a dy + k1 x + k0,

with per-channel k1 = -a inv dgamma / n and k0 = -k1 mean - a dbeta / n: three passes to reduce, one to write.
CMT-Ti@160, batch 32, interleaved: 0.97x the step time. Same function, same moving-statistics update (biased
batch variance, as Keras); inference, masks, renorm, synchronized statistics and other backends take Keras' path.
On a CPU-only machine the whole layer, with the GELU before it where CMT has one (`gelu_first`), runs as one C++
kernel each way instead (`keras_cmt.kernels`), which is where most of the remaining element-wise time went.
"""

import keras
from keras import ops

from keras_cmt import kernels
from keras_cmt.layers.gelu import exact_gelu


def _train_batch_norm(x, gamma, beta, epsilon):
    """(y, batch mean, batch variance) over all axes but the last, with the closed-form gradient."""
    import tensorflow as tf

    axes = list(range(len(x.shape) - 1))

    @tf.custom_gradient
    def forward(x, gamma, beta):
        mean = tf.reduce_mean(x, axes)
        variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes)
        inv = tf.math.rsqrt(variance + epsilon)
        a = gamma * inv
        y = x * a + (beta - mean * a)

        def grad(dy, _dmean, _dvariance):
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
            dbeta = tf.reduce_sum(dy, axes)
            dgamma = inv * (tf.reduce_sum(dy * x, axes) - mean * dbeta)
            k1 = -a * inv * dgamma / n
            k0 = -k1 * mean - a * dbeta / n
            return dy * a + (x * k1 + k0), dgamma, dbeta

        return (y, mean, variance), grad

    return forward(x, gamma, beta)


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (same arguments and variables) with a cheaper training step on TF."""

    def build(self, input_shape):
        super().build(input_shape)
        self._channels_last = self.axis in (-1, len(input_shape) - 1)

    def _uses_closed_form(self, training, mask):
        return (bool(training) and self.trainable and mask is None and self._channels_last and self.scale
                and self.center and not self.renorm and not self.synchronized
                and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None, gelu_first=False):
        """`gelu_first=True` normalises exact-GELU(inputs): CMT's GELU -> BatchNorm pairs, fused when training."""
        if not self._uses_closed_form(training, mask):
            if gelu_first:
                inputs = exact_gelu(inputs, training=training)
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))  # statistics in float32
        gamma, beta = ops.cast(self.gamma, x.dtype), ops.cast(self.beta, x.dtype)
        fused = kernels.batch_norm(x, gamma, beta, self.epsilon, gelu=gelu_first)
        if fused is None:
            y, mean, variance = _train_batch_norm(exact_gelu(x, training=True) if gelu_first else x, gamma, beta,
                                                  self.epsilon)
        else:
            y, mean, variance = fused
        keep = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * keep + mean * (1.0 - keep))
        self.moving_variance.assign(ops.cast(self.moving_variance, x.dtype) * keep + variance * (1.0 - keep))
        return ops.cast(y, self.compute_dtype)
