"""Input normalisation and prediction decoding, as the official training used (RGB, ImageNet mean/std)."""

import keras
import numpy as np
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_input(x, data_format=None):
    """Maps RGB pixels in [0, 255] to (x / 255 - mean) / std over the last (channels) axis.

    Accepts numpy arrays (returns float32 numpy) and tensors (returns a tensor). `data_format` is accepted for
    `keras.applications` compatibility; only channels_last is supported.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"keras_cmt models are channels_last; got data_format={data_format!r}.")
    mean = np.array(IMAGENET_MEAN, dtype="float32") * 255.0
    std = np.array(IMAGENET_STD, dtype="float32") * 255.0
    if isinstance(x, np.ndarray) or np.isscalar(x):
        x = np.asarray(x, dtype="float32")
        if x.shape[-1] != 3:
            raise ValueError(f"preprocess_input expects RGB with 3 channels last; got shape {x.shape}.")
        return (x - mean) / std
    x = ops.cast(x, "float32")
    return (x - mean) / std


def decode_predictions(preds, top=5):
    """Decodes ImageNet-1k predictions into (class_id, class_name, score) tuples, as keras.applications does."""
    return keras.applications.imagenet_utils.decode_predictions(preds, top=top)
