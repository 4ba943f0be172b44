"""Which axis holds the channels: CMT's layers follow `keras.config.image_data_format()` like Keras' own.

channels_last is what TensorFlow's CPU kernels and TFLite take; channels_first is PyTorch's native layout, where
the torch backend then runs every convolution without transposing around it.
"""

import keras
from keras import ops


def standardize_data_format(data_format):
    """`data_format`, or the Keras default when None; refuses anything but the two image layouts."""
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first'; got {data_format!r}.")
    return data_format


def channel_axis(data_format):
    return -1 if data_format == "channels_last" else 1


def spatial_axes(data_format):
    return (1, 2) if data_format == "channels_last" else (2, 3)


def spatial_size(x, data_format):
    """(height, width) of a feature map: static where known, else read at run time (a model of any input size)."""
    axes = spatial_axes(data_format)
    static = tuple(x.shape[axis] for axis in axes)
    if None not in static:
        return static
    dynamic = ops.shape(x)
    return tuple(dynamic[axis] if size is None else size for axis, size in zip(axes, static))
