"""The official evaluation transform and image decoding, for the command line and users' own pipelines.

The official evaluation (DeiT's `build_transform(is_train=False)`, which CMT reuses) resizes the shorter side
bicubically to `int((256 / 224) * input_size)` (in general `int(input_size / crop_pct)`), centre-crops
`input_size` x `input_size`, scales to [0, 1] and normalises with the ImageNet mean/std. The released top-1 figures
hold only with that transform.

torchvision applies it to PIL images, so for numpy input it is done here with Pillow itself: the official transform
exactly, bit for bit (width pass first, as Pillow did then), and no TensorFlow needed (`pip install keras-cmt` does
not pull TensorFlow in). For a TensorFlow tensor, e.g. inside a `tf.data` pipeline (`dataset.map(lambda image,
label: (eval_transform(image, 224), label))`), it runs as TensorFlow ops instead: two antialiased bicubic
`tf.image.resize` passes (width, then height, rounded after each, as PIL does) with the same a=-0.5 kernel, within
one grey level of PIL (PIL works in fixed point). TensorFlow is imported only on that path. Both paths share the
size and crop arithmetic below.
"""

import io
import math
import os
import sys
import warnings

import numpy as np

from keras_cmt.preprocessing import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_CROP_PCT = 224 / 256
# What tf.io.decode_image read before (WebP where Pillow is built with it); anything else is refused.
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def resize_size(size):
    """The shorter side before the centre crop, computed exactly as the official code: int((256 / 224) * size)."""
    return int((256 / 224) * size)


def short_side(size, crop_pct=DEFAULT_CROP_PCT):
    """The shorter side before the centre crop: `resize_size(size)` for the default crop_pct, else
    int(size / crop_pct) (timm's `math.floor(img_size / crop_pct)`)."""
    if crop_pct == DEFAULT_CROP_PCT:
        return resize_size(size)
    return int(math.floor(size / crop_pct))


def _resized_shape(height, width, shorter, short):
    """torchvision's Resize(short): the shorter side becomes `short`, the longer int(short * long / shorter).

    `shorter` is min(height, width). Integer floor division equals the official float expression for every image
    below 2**53 / short pixels along a side, and works alike on Python ints and integer tensors.
    """
    return short * height // shorter, short * width // shorter


def _crop_offset(extra):
    """torchvision's CenterCrop offset int(round(extra / 2.0)) (Python's round half to even) in integer arithmetic."""
    half = extra // 2
    return half + (extra % 2) * (half % 2)


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int (the square crop side); got {size!r}.")
    return int(size)


def _check_crop_pct(crop_pct):
    if (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float, np.integer, np.floating))
            or not 0.0 < crop_pct <= 1.0):
        raise ValueError(f"crop_pct must be a number in (0, 1] (the crop's share of the resized shorter side); "
                         f"got {crop_pct!r}.")
    return float(crop_pct)


def _shape_error(shape):
    return ValueError(f"eval_transform expects one RGB image (height, width, 3); got shape {shape}.")


def _normalise(crop):
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (crop / np.float32(255.0) - mean) / std


def _transform_pil(image, size, normalize, crop_pct):
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise _shape_error(image.shape)
    if image.dtype != np.uint8:
        if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
            raise ValueError(f"eval_transform expects uint8 pixels or numbers in [0, 255]; got dtype {image.dtype}.")
        image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise _shape_error(image.shape)
    new_h, new_w = _resized_shape(height, width, min(height, width), short_side(size, crop_pct))
    # torchvision's Resize on a PIL image is PIL's bicubic resize (antialiased, a=-0.5, rounded to uint8 after
    # each of its two passes). Pillow < 12.2 always resamples the width first; newer Pillow runs the height first
    # for some tall images, which rounds differently. The width-then-height passes spelled out give the official
    # result on every Pillow version (the same bytes as one `.resize` whenever Pillow goes width first).
    resized = Image.fromarray(np.ascontiguousarray(image))
    resized = resized.resize((new_w, height), Image.BICUBIC).resize((new_w, new_h), Image.BICUBIC)
    top, left = _crop_offset(new_h - size), _crop_offset(new_w - size)
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)
    return _normalise(crop) if normalize else crop


def _transform_tf(image, size, normalize, crop_pct):
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or (image.shape[-1] is not None and image.shape[-1] != 3):
        raise _shape_error(image.shape)
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    short = tf.constant(short_side(size, crop_pct), tf.int64)
    new_h, new_w = _resized_shape(height, width, tf.minimum(height, width), short)
    new_h, new_w = tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)
    # PIL resamples the width first, then the height, rounding to uint8 after each pass: so do we.
    resized = tf.cast(image, tf.float32)
    for target in (tf.stack([tf.cast(height, tf.int32), new_w]), tf.stack([new_h, new_w])):
        resized = tf.image.resize(resized, target, method="bicubic", antialias=True)
        resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    top, left = _crop_offset(new_h - size), _crop_offset(new_w - size)
    cropped = tf.slice(resized, tf.stack([top, left, 0]), [size, size, 3])
    if not normalize:
        return cropped
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (cropped / 255.0 - mean) / std


def _is_tf_tensor(image):
    """True for a TensorFlow tensor (eager or symbolic, as in tf.data); never imports TensorFlow."""
    if type(image).__module__.startswith("tensorflow"):
        return True
    tf = sys.modules.get("tensorflow")
    return tf is not None and hasattr(tf, "is_tensor") and tf.is_tensor(image)


def eval_transform(image, size, normalize=True, crop_pct=DEFAULT_CROP_PCT):
    """Applies the official evaluation transform to one RGB image.

    Args:
        image: (height, width, 3) RGB, uint8 or float in [0, 255] (rounded to uint8 first, as a PIL image holds
            it): a numpy array (or anything `np.asarray` takes), or a TensorFlow tensor (also symbolic, in
            `tf.data`).
        size: the model's (square) input size, e.g. 224.
        normalize: apply the ImageNet mean/std (True, what CMT expects); False returns the crop in [0, 255].
        crop_pct: the crop's share of the resized shorter side, in (0, 1]; the shorter side is resized to
            `int(size / crop_pct)` (for the default 0.875, `resize_size(size)`, as the official code).

    Returns:
        A float32 (size, size, 3) array: numpy (exactly torchvision's transform with PIL) for numpy input, a
        TensorFlow tensor (within one grey level of it) for a TensorFlow tensor.
    """
    size = _check_size(size)
    crop_pct = _check_crop_pct(crop_pct)
    if _is_tf_tensor(image):
        return _transform_tf(image, size, normalize, crop_pct)
    return _transform_pil(image, size, normalize, crop_pct)


def decode_image(contents):
    """Decodes JPEG/PNG/GIF/BMP bytes to a uint8 (height, width, 3) RGB tensor (first frame of a GIF); for
    `tf.data` (`tf.data.Dataset.map(lambda path: decode_image(tf.io.read_file(path)))`). Needs TensorFlow."""
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _one_line(error):
    detail = " ".join(str(error).split()) or type(error).__name__
    return detail[:160]


def load_image(path):
    """Reads and decodes an image file (JPEG, PNG, GIF's first frame, BMP, WebP) with Pillow to a uint8
    (height, width, 3) RGB numpy array, converted as torchvision's loader does (`.convert("RGB")`).

    Raises ValueError naming the file when it is missing or cannot be decoded, also for an image declaring more
    pixels than Pillow's `Image.MAX_IMAGE_PIXELS` (a decompression bomb), before any pixel is decoded.
    """
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file.")
    with open(path, "rb") as f:
        contents = f.read()
    Image.init()
    formats = [name for name in _FORMATS if name in Image.OPEN]  # WebP only where Pillow registered it
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; refuse both, from the header alone.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(contents), formats=formats) as image:
                image.seek(0)
                if image.mode in _WIDE_GREY_MODES:
                    # 16-bit grey PNG: its high byte (what Pillow keeps of 16-bit RGB, and what
                    # tf.io.decode_image returns); `.convert("RGB")` would clip everything above 255 to white.
                    grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                    return np.repeat(grey[..., None], 3, axis=-1)
                rgb = image.convert("RGB")
    except Image.UnidentifiedImageError:
        detail = "not a JPEG, PNG, GIF, BMP or WebP image"
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types (OSError, SyntaxError, ...)
        detail = _one_line(e)
    else:
        return np.asarray(rgb, dtype=np.uint8)
    raise ValueError(f"{path}: cannot decode the image (JPEG, PNG, GIF or BMP expected): {detail}")
