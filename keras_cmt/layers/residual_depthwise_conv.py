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
    """`inputs + DepthwiseConv2D(inputs)`: odd kernel, padding "same", stride 1, depth multiplier 1, no activation.

    In float32 the residual is the kernel's +1 centre tap (summed in float32). In lower compute precision
    (mixed_float16 / mixed_bfloat16) it stays a separate addition, exactly as `x + dwconv(x)` rounds: a float16 or
    bfloat16 `w + 1` would give every channel's centre tap a fixed rounding error of up to 2^-11 / 2^-8.
    """

    def __init__(self, *args, **kwargs):
        kwargs["autocast"] = False  # call() casts inputs and variables itself, after adding the tap in float32
        super().__init__(*args, **kwargs)
        kernel_odd = all(size % 2 == 1 for size in self.kernel_size)
        if not (kernel_odd and self.padding == "same" and tuple(self.strides) == (1, 1) and self.depth_multiplier == 1
                and tuple(self.dilation_rate) == (1, 1) and self.activation is keras.activations.linear):
            raise ValueError(
                f"{self.name}: a residual depthwise convolution keeps the input's shape and adds it before nothing "
                f"else: it needs an odd kernel, padding='same', strides 1, dilation 1, depth_multiplier 1 and no "
                f"activation; got kernel_size={self.kernel_size}, padding={self.padding!r}, strides={self.strides}, "
                f"dilation_rate={self.dilation_rate}, depth_multiplier={self.depth_multiplier}, "
                f"activation={keras.activations.serialize(self.activation)!r}")

    def build(self, input_shape):
        super().build(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        identity = np.zeros(self.kernel_size + (input_shape[channel_axis], 1), np.float32)
        identity[self.kernel_size[0] // 2, self.kernel_size[1] // 2] = 1.0
        self._identity_tap = identity

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        separate_residual = keras.backend.standardize_dtype(self.compute_dtype) != "float32"
        kernel = self.kernel if separate_residual else self.kernel + ops.cast(self._identity_tap, self.kernel.dtype)
        outputs = ops.depthwise_conv(inputs, ops.cast(kernel, self.compute_dtype), strides=self.strides,
                                     padding=self.padding, dilation_rate=self.dilation_rate,
                                     data_format=self.data_format)
        if self.use_bias:
            shape = (1, 1, 1, -1) if self.data_format == "channels_last" else (1, -1, 1, 1)
            outputs = ops.add(outputs, ops.reshape(ops.cast(self.bias, self.compute_dtype), shape))
        return ops.add(inputs, outputs) if separate_residual else outputs
