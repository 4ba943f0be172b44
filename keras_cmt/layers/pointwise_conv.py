"""1x1 convolutions as matrix products: the same layer and weights as `keras.layers.Conv2D(filters, 1)`.

CMT's projections (q, k, v, proj, the IRFFN's expand/project, the head) are 1x1 convolutions. On TensorFlow a 1x1
Conv2D's gradient runs through oneDNN's convolution backward kernels; written as MatMul + BiasAdd on the
flattened pixels, forward and backward are plain GEMMs, and the forward is the MatMul+BiasAdd pattern oneDNN
fuses. CMT-Ti@160, batch 32, AdamW, interleaved in one process: 0.94-0.97x the training step time.
"""

import keras
from keras import ops


def pointwise_conv(x, kernel, bias=None, gelu=False):
    """A 1x1 convolution with kernel (1, 1, C_in, C_out) and optional bias, optionally followed by exact GELU.

    On TensorFlow it is written as MatMul -> BiasAdd (-> GELU) on the flattened pixels: the pattern TensorFlow's
    oneDNN remapper fuses into one `_FusedMatMul` kernel (a separate GELU is four element-wise kernels, and an
    `AddV2` bias, which `ops.conv(...) + bias` gives, blocks the fusion), and whose gradient is two GEMMs. The
    TFLite converter turns the same graph into FULLY_CONNECTED ops, which XNNPACK runs as the same GEMM as a 1x1
    CONV_2D.
    """
    if keras.backend.backend() != "tensorflow":
        y = ops.conv(x, kernel, padding="valid")
        y = y if bias is None else y + bias
        return keras.activations.gelu(y, approximate=False) if gelu else y
    import tensorflow as tf

    channels_in, channels_out = kernel.shape[-2], kernel.shape[-1]
    y = tf.matmul(tf.reshape(x, (-1, channels_in)), tf.reshape(kernel, (channels_in, channels_out)))
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    if gelu:
        y = tf.nn.gelu(y, approximate=False)
    spatial = tuple(x.shape[1:-1])
    if None in spatial:
        return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [channels_out]], axis=0))
    return tf.reshape(y, (-1,) + spatial + (channels_out,))


@keras.saving.register_keras_serializable(package="keras_cmt")
class PointwiseConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that computes its 1x1, stride-1 case with `pointwise_conv` (a matrix product on
    TensorFlow).

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
        bias = ops.cast(self.bias, inputs.dtype) if self.use_bias else None
        y = pointwise_conv(inputs, ops.cast(self.kernel, inputs.dtype), bias)
        return self.activation(y) if self.activation is not None else y
