"""CMT's Local Perception Unit: x + DWConv3x3(x), a translation-invariant local term ahead of attention."""

import keras

from keras_cmt.layers.residual_depthwise_conv import ResidualDepthwiseConv2D


@keras.saving.register_keras_serializable(package="keras_cmt")
class LocalPerceptionUnit(keras.layers.Layer):
    """Residual 3x3 depthwise convolution (with bias), NHWC in and out."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = ResidualDepthwiseConv2D(3, padding="same", name="proj", dtype=self.dtype_policy)  # x + dwconv(x)

    def build(self, input_shape):
        self.proj.build(input_shape)

    def call(self, inputs):
        return self.proj(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
