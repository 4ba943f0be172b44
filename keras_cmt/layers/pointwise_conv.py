"""1x1 convolutions as matrix products: the same layer and weights as `keras.layers.Conv2D(filters, 1)`.

CMT's projections (q, k, v, proj, the IRFFN's expand/project, the head) are 1x1 convolutions. On TensorFlow a 1x1
Conv2D's gradient runs through oneDNN's convolution backward kernels; written as MatMul + BiasAdd on the
flattened pixels, forward and backward are plain GEMMs, and the forward is the MatMul+BiasAdd pattern oneDNN
fuses. CMT-Ti@160, batch 32, AdamW, interleaved in one process: 0.94-0.97x the training step time.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cmt")
class PointwiseConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that computes its 1x1, stride-1 case as a matrix product on TensorFlow.

    Same constructor, variables (kernel (1, 1, C_in, C_out)) and outputs as Conv2D, so checkpoints, weight files
    and `fuse_for_inference` read it as one. Other kernel sizes, strides, groups or backends use Conv2D's path.
    """

    def _is_matmul(self):
        return (keras.backend.backend() == "tensorflow" and tuple(self.kernel_size) == (1, 1)
                and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and self.data_format == "channels_last")

    def call(self, inputs):
        if not self._is_matmul():
            return super().call(inputs)
        import tensorflow as tf

        channels_in, channels_out = self.kernel.shape[-2], self.kernel.shape[-1]
        kernel = tf.reshape(ops.cast(self.kernel, inputs.dtype), (channels_in, channels_out))
        y = tf.matmul(tf.reshape(inputs, (-1, channels_in)), kernel)
        if self.use_bias:
            y = tf.nn.bias_add(y, ops.cast(self.bias, y.dtype))
        spatial = tuple(inputs.shape[1:-1])
        if None in spatial:
            y = tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [channels_out]], axis=0))
        else:
            y = tf.reshape(y, (-1,) + spatial + (channels_out,))
        return self.activation(y) if self.activation is not None else y
