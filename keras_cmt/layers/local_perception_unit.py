"""CMT's Local Perception Unit, LPU(x) = DWConv3x3(x) + x: a translation-invariant local term ahead of attention.

The IRFFN's middle step, F(x) = DWConv3x3(x) + x, is the same residual depthwise convolution and uses this layer
too. The convolution's bias is added after the shortcut, (W * x + x) + b, the same function: TensorFlow 2.21's
oneDNN remapper turns DepthwiseConv2D + BiasAdd + Add into a node that Grappler then cannot import, and drops every
graph optimization of the function (with an error on the console) whenever `x + DepthwiseConv2D(x)` is traced.
"""

import keras
from keras import ops

from keras_cmt.layers import checkpoint_layout, folding, initializers
from keras_cmt.layers.data_format import standardize_data_format


@keras.saving.register_keras_serializable(package="keras_cmt")
class LocalPerceptionUnit(keras.layers.Layer):
    """x + (a 3x3 depthwise convolution with bias) over `dim` channels (the official block's `proj`)."""

    def __init__(self, dim, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.data_format = standardize_data_format(data_format)
        self.proj = keras.layers.DepthwiseConv2D(
            3,
            padding="same",
            use_bias=False,
            data_format=self.data_format,
            depthwise_initializer=initializers.depthwise_kernel(self.dim),
            name="proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.bias = self.add_weight(name="bias", shape=(self.dim,), initializer="zeros")

    def call(self, inputs):
        bias = self.bias if self.data_format == "channels_last" else ops.reshape(self.bias, (self.dim, 1, 1))
        return ops.add(inputs + self.proj(inputs), bias)

    def compute_output_shape(self, input_shape):
        return input_shape

    def checkpoint_entries(self, prefix):
        """The official keys: the depthwise convolution's weight, and its bias (held by the unit)."""
        return [
            (f"{prefix}.weight", self.proj.kernel, checkpoint_layout.depthwise),
            (f"{prefix}.bias", self.bias, checkpoint_layout.same),
        ]

    def folded(self):
        """The serving form: one depthwise convolution, the shortcut as +1 on its centre tap; (kernel, bias)."""
        return folding.with_identity_tap(folding.array(self.proj.kernel)), folding.array(self.bias)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "data_format": self.data_format}
