"""The official evaluation transform and image decoding, for the command line and users' own pipelines.

The official evaluation (DeiT's `build_transform(is_train=False)`, which CMT reuses) resizes the shorter side
bicubically to `int((256 / 224) * input_size)`, centre-crops `input_size` x `input_size`, scales to [0, 1] and
normalises with the ImageNet mean/std. The released top-1 figures hold only with that transform. It is written with
TensorFlow ops so the same function runs eagerly on numpy arrays and inside `tf.data` pipelines
(`dataset.map(lambda image, label: (eval_transform(image, 224), label))`).

PIL's bicubic resize, which torchvision applies to PIL images, is antialiased when shrinking and returns uint8;
two `tf.image.resize(..., "bicubic", antialias=True)` passes (width, then height), each rounded, reproduce it
closely (the same a=-0.5 kernel; see tests/test_image_transforms.py for the measured difference).
"""

import os

import numpy as np

from keras_cmt.preprocessing import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_CROP_PCT = 224 / 256


def resize_size(size):
    """The shorter side before the centre crop, computed exactly as the official code: int((256 / 224) * size)."""
    return int((256 / 224) * size)


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int (the square crop side); got {size!r}.")
    return int(size)


def _transform(image, size, normalize):
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or (image.shape[-1] is not None and image.shape[-1] != 3):
        raise ValueError(f"eval_transform expects one RGB image (height, width, 3); got shape {image.shape}.")
    short = resize_size(size)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    # torchvision's Resize(int): the shorter side becomes `short`, the longer int(short * long / short_side).
    h64, w64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    new_h = tf.where(height <= width, short, tf.cast(tf.floor(short * h64 / w64), tf.int32))
    new_w = tf.where(height <= width, tf.cast(tf.floor(short * w64 / h64), tf.int32), short)
    # PIL resamples the width first, then the height, rounding to uint8 after each pass: so do we.
    resized = tf.cast(image, tf.float32)
    for target in (tf.stack([height, new_w]), tf.stack([new_h, new_w])):
        resized = tf.image.resize(resized, target, method="bicubic", antialias=True)
        resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    # torchvision's CenterCrop: top = int(round((h - size) / 2)), with Python's round-half-to-even (as tf.round).
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    cropped = tf.slice(resized, tf.stack([top, left, 0]), [size, size, 3])
    if not normalize:
        return cropped
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (cropped / 255.0 - mean) / std


def eval_transform(image, size, normalize=True):
    """Applies the official evaluation transform to one RGB image.

    Args:
        image: (height, width, 3) RGB, uint8 or float in [0, 255]; a numpy array or a tensor (also symbolic, in
            `tf.data`).
        size: the model's (square) input size, e.g. 224.
        normalize: apply the ImageNet mean/std (True, what CMT expects); False returns the crop in [0, 255].

    Returns:
        A float32 (size, size, 3) array: numpy for numpy input, a tensor otherwise.
    """
    size = _check_size(size)
    if isinstance(image, np.ndarray):
        return _transform(image, size, normalize).numpy()
    return _transform(image, size, normalize)


def decode_image(contents):
    """Decodes JPEG/PNG/GIF/BMP bytes to a uint8 (height, width, 3) RGB tensor (first frame of a GIF); for
    `tf.data` (`tf.data.Dataset.map(lambda path: decode_image(tf.io.read_file(path)))`)."""
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def load_image(path):
    """Reads and decodes an image file to a uint8 (height, width, 3) RGB numpy array.

    Raises ValueError naming the file when it is missing or cannot be decoded.
    """
    import tensorflow as tf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file.")
    with open(path, "rb") as f:
        contents = f.read()
    try:
        return decode_image(contents).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        detail = " ".join(str(e.message).split())[:160]
        raise ValueError(f"{path}: cannot decode the image (JPEG, PNG, GIF or BMP expected): {detail}") from None
