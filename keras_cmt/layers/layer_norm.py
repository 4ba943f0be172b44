"""LayerNorm over the channels of a feature map, in either data format.

CMT normalises each position over its channels (nn.LayerNorm on tokens). Keras' `LayerNormalization` computes
that on TensorFlow and JAX with `keras.ops.moments`, but on PyTorch it calls `F.layer_norm` with a shape read off
the input, which breaks twice: in channels_first it normalises the *trailing* axis instead (keras-team/keras#23510,
fixed after 3.15), and under `torch.onnx.export`'s tracer that shape becomes a traced value the ONNX LayerNorm
cannot take ("onnx::Gather ... is not constant", so `model.export(format="onnx")` fails). This layer is Keras'
layer with the moments form written out in `keras.ops` (the same operations, in the same order, that Keras runs on
its other backends), so every backend and every exporter sees the same graph.
"""

import keras
from keras import ops

from keras_cmt.layers.data_format import channel_axis


@keras.saving.register_keras_serializable(package="keras_cmt")
class ChannelLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the channel axis, computed with `keras.ops.moments` everywhere."""

    def call(self, inputs):
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = ops.moments(x, axes=self.axis, keepdims=True)
        shape = [1] * len(x.shape)
        for axis in self.axis:
            shape[axis] = x.shape[axis]
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * ops.reshape(ops.cast(self.gamma, x.dtype), shape)
        shift = -mean * inv
        if self.center:
            shift = shift + ops.reshape(ops.cast(self.beta, x.dtype), shape)
        return ops.cast(x * inv + shift, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_cmt")
class ChannelsFirstLayerNormalization(ChannelLayerNormalization):
    """The name this layer had when only channels_first used it (configs that name it still load)."""


def channel_layer_norm(epsilon, data_format, **kwargs):
    """A LayerNormalization over the channel axis of `data_format`."""
    return ChannelLayerNormalization(axis=channel_axis(data_format), epsilon=epsilon, **kwargs)
