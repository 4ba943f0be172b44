"""Input normalisation and prediction decoding, as the official training used (RGB, ImageNet mean/std)."""

import functools
import json
import os

import keras
import numpy as np
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_input(x, data_format=None):
    """Maps RGB pixels in [0, 255] to (x / 255 - mean) / std over the channel axis.

    Accepts numpy arrays (returns float32 numpy) and tensors of the current backend (returns a tensor).
    `data_format` is "channels_last" or "channels_first" (default: Keras' image data format), as in
    `keras.applications`.
    """
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first'; got {data_format!r}.")
    axis = -1 if data_format == "channels_last" else (1 if len(x.shape) == 4 else 0)
    if x.shape[axis] != 3:
        raise ValueError(
            f"preprocess_input expects RGB with 3 channels on axis {axis} ({data_format}); got shape {tuple(x.shape)}."
        )
    shape = [1] * len(x.shape)
    shape[axis] = 3
    mean = (np.array(IMAGENET_MEAN, dtype="float32") * 255.0).reshape(shape)
    std = (np.array(IMAGENET_STD, dtype="float32") * 255.0).reshape(shape)
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return (np.asarray(x, dtype="float32") - mean) / std
    x = ops.cast(x, "float32")
    return (x - ops.convert_to_tensor(mean)) / ops.convert_to_tensor(std)


@functools.lru_cache(maxsize=1)
def imagenet_class_index():
    """The ImageNet-1k class index {id: (wordnet_id, name)} bundled with the package (no download at run time)."""
    path = os.path.join(os.path.dirname(__file__), "data", "imagenet_class_index.json")
    with open(path) as f:
        return {int(k): tuple(v) for k, v in json.load(f).items()}


def imagenet_labels():
    """The 1000 ImageNet-1k class names in class-id order."""
    index = imagenet_class_index()
    return [index[i][1] for i in range(len(index))]


def decode_predictions(preds, top=5):
    """Decodes ImageNet-1k predictions into lists of (wordnet_id, class_name, score), best first, per sample.

    Same output as `keras.applications.imagenet_utils.decode_predictions`, but from the bundled class index, so
    it works offline.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(f"decode_predictions expects a (samples, 1000) array; got shape {preds.shape}.")
    index = imagenet_class_index()
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append([index[int(i)] + (float(row[i]),) for i in best])
    return results
