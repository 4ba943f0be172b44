"""x + DepthwiseConv2D(x) as one depthwise convolution: CMT's LPU and the IRFFN's shortcut around its 3x3.

The residual is +1 on the kernel's centre tap, added to the variable at call time, so the variables, their names
and the checkpoint mapping are those of a plain `keras.layers.DepthwiseConv2D`, and gradients are unchanged.
Why not `x + dwconv(x)`: TensorFlow 2.21's oneDNN remapper fuses DepthwiseConv2dNative + BiasAdd + Add into a node
that Grappler then cannot import ("Node ... has an empty op name"), and TensorFlow drops every graph optimization
of the function, so `predict` / `evaluate` of the as-built model ran unoptimized (benchmarks/RESULTS.md).
"""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cmt")
class ResidualDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`inputs + DepthwiseConv2D(inputs)`: odd kernel, padding "same", stride 1, depth multiplier 1."""

    def build(self, input_shape):
        kernel_odd = all(size % 2 == 1 for size in self.kernel_size)
        if not (kernel_odd and self.padding == "same" and self.strides == (1, 1) and self.depth_multiplier == 1
                and self.dilation_rate == (1, 1)):
            raise ValueError(
                f"{self.name}: a residual depthwise convolution keeps the input's shape: it needs an odd kernel, "
                f"padding='same', strides 1, dilation 1 and depth_multiplier 1; got kernel_size={self.kernel_size}, "
                f"padding={self.padding!r}, strides={self.strides}, dilation_rate={self.dilation_rate}, "
                f"depth_multiplier={self.depth_multiplier}")
        super().build(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        identity = np.zeros(self.kernel_size + (input_shape[channel_axis], 1), np.float32)
        identity[self.kernel_size[0] // 2, self.kernel_size[1] // 2] = 1.0
        self._identity_tap = identity

    def call(self, inputs):
        kernel = self.kernel + ops.cast(self._identity_tap, self.kernel.dtype)
        outputs = ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                                     dilation_rate=self.dilation_rate, data_format=self.data_format)
        if self.use_bias:
            shape = (1, 1, 1, -1) if self.data_format == "channels_last" else (1, -1, 1, 1)
            outputs = ops.add(outputs, ops.reshape(self.bias, shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
