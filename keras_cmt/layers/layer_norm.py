"""LayerNorm over the channels of a feature map, in either data format.

CMT normalises each position over its channels (nn.LayerNorm on tokens). In channels_last that is
`keras.layers.LayerNormalization()` as it stands. In channels_first the channel axis is not the last one, and Keras
3.15's torch backend hands any single axis to `F.layer_norm`, which normalises the *trailing* axis instead (an error,
or silently the wrong axis when width equals channels; keras-team/keras#23510, fixed after 3.15). That layout gets
the same layer with the moments written out in `keras.ops`, the composed path Keras takes on its other backends.
"""

import keras
from keras import ops

from keras_cmt.layers.data_format import channel_axis


@keras.saving.register_keras_serializable(package="keras_cmt")
class ChannelsFirstLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization(axis=1)` computed with `keras.ops.moments` on every backend."""

    def call(self, inputs):
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = ops.moments(x, axes=self.axis, keepdims=True)
        shape = [1] * len(x.shape)
        for axis in self.axis:
            shape[axis] = x.shape[axis]
        outputs = (x - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.reshape(ops.cast(self.gamma, x.dtype), shape)
        if self.center:
            outputs = outputs + ops.reshape(ops.cast(self.beta, x.dtype), shape)
        return ops.cast(outputs, self.compute_dtype)


def channel_layer_norm(epsilon, data_format, **kwargs):
    """A LayerNormalization over the channel axis: Keras' own in channels_last."""
    if data_format == "channels_last":
        return keras.layers.LayerNormalization(axis=-1, epsilon=epsilon, **kwargs)
    return ChannelsFirstLayerNormalization(axis=channel_axis(data_format), epsilon=epsilon, **kwargs)
