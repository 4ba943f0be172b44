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

Memory is bounded by the crop, not by the resized image: a 1x8000 image's shorter side scaled to 256 would be
256x2048000 pixels. The TensorFlow path computes only the crop, from the source pixels it reads; the Pillow path
does so too (Pillow's fixed-point arithmetic for those pixels alone, the same bytes) wherever Pillow's own passes
would grow beyond a few times the source or the resized shorter side squared.
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
    if (
        isinstance(crop_pct, bool)
        or not isinstance(crop_pct, (int, float, np.integer, np.floating))
        or not 0.0 < crop_pct <= 1.0
    ):
        raise ValueError(
            f"crop_pct must be a number in (0, 1] (the crop's share of the resized shorter side); got {crop_pct!r}."
        )
    return float(crop_pct)


def _shape_error(shape):
    return ValueError(f"eval_transform expects one RGB image (height, width, 3); got shape {shape}.")


def _normalise(crop):
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (crop / np.float32(255.0) - mean) / std


# Pillow's fixed-point resampling: coefficients with 22 fractional bits, accumulated in integers (Resample.c).
_PRECISION_BITS = 22
# The PIL path hands the resize to Pillow itself (exact by construction, and fast) while neither of its passes
# produces more than this many times the pixels of the source or of the resized shorter side squared.
_PIL_GROWTH = 4


def _bicubic(x):
    """Pillow's bicubic filter (a = -0.5), evaluated in Pillow's order of operations."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _pil_taps(in_size, out_size, first, count):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the output pixels first..first+count-1 of a resize
    from `in_size` to `out_size` along one axis: (start index per pixel, integer coefficients (count, taps))."""
    scale = float(np.float32(in_size)) / out_size  # Pillow's box is float32: (in1 - in0) rounded so, then double
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(first, first + count, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    weights = np.zeros((count, taps))
    total = np.zeros(count)
    for t in range(taps):  # summed tap by tap, as Pillow does (np.sum's pairwise order could round differently)
        w = np.where(t < xmax, _bicubic(((xmin + t).astype(np.float64) - center + 0.5) * (1.0 / filterscale)), 0.0)
        weights[:, t] = w
        total += w
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = weights * float(1 << _PRECISION_BITS)
    fixed = np.trunc(np.where(weights < 0, fixed - 0.5, fixed + 0.5)).astype(np.int64)
    return xmin, fixed


def _resample(image, axis, taps, offset):
    """One Pillow resampling pass of a uint8 image along `axis` (1: width, 0: height) with `_pil_taps`' output;
    `offset` is the source index of the image's first row or column along that axis."""
    start, coefficients = taps
    length = image.shape[axis]
    total = np.full((len(start),) + tuple(np.delete(image.shape, axis)), 1 << (_PRECISION_BITS - 1), np.int64)
    for t in range(coefficients.shape[1]):
        index = np.minimum(start - offset + t, length - 1)  # a tap past the window has coefficient 0
        k = coefficients[:, t].reshape((-1,) + (1,) * (image.ndim - 1))
        total += np.moveaxis(np.take(image, index, axis=axis), axis, 0).astype(np.int64) * k
    out = np.clip(total >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def _window(taps, limit):
    """The source range [lo, hi) the pixels of `_pil_taps` read."""
    start, coefficients = taps
    return int(start.min()), int(min(limit, start.max() + coefficients.shape[1]))


def _crop_pil_exact(image, size, new_h, new_w, top, left):
    """The centre crop of the official resize, computing only the crop: Pillow's arithmetic for those pixels alone
    (the same bytes as Pillow's resize and crop), from just the source rows and columns they read."""
    height, width = image.shape[:2]
    rows = _pil_taps(height, new_h, top, size) if new_h != height else None
    cols = _pil_taps(width, new_w, left, size) if new_w != width else None
    r0, r1 = _window(rows, height) if rows is not None else (top, top + size)
    c0, c1 = _window(cols, width) if cols is not None else (left, left + size)
    region = image[r0:r1, c0:c1]
    region = _resample(region, 1, cols, c0) if cols is not None else region
    region = _resample(region, 0, rows, r0) if rows is not None else region
    return region


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
    short = short_side(size, crop_pct)
    new_h, new_w = _resized_shape(height, width, min(height, width), short)
    top, left = _crop_offset(new_h - size), _crop_offset(new_w - size)
    bound = _PIL_GROWTH * max(height * width, short * short)
    if new_w * height > bound or size * new_h > bound:
        # An extreme aspect ratio (e.g. 1x8000): the full resize would hold up to a few GB for a 224 crop.
        crop = _crop_pil_exact(np.ascontiguousarray(image), size, new_h, new_w, top, left)
    else:
        # torchvision's Resize on a PIL image is PIL's bicubic resize (antialiased, a=-0.5, rounded to uint8 after
        # each of its two passes). Pillow < 12.2 always resamples the width first; newer Pillow runs the height
        # first for some tall images, which rounds differently. The width-then-height passes spelled out give the
        # official result on every Pillow version; the height pass resamples columns independently, so cropping
        # the columns in between changes nothing.
        resized = Image.fromarray(np.ascontiguousarray(image))
        resized = resized.resize((new_w, height), Image.BICUBIC).crop((left, 0, left + size, height))
        resized = resized.resize((size, new_h), Image.BICUBIC)
        crop = np.asarray(resized.crop((0, top, size, top + size)))
    crop = np.asarray(crop, dtype=np.float32)
    return _normalise(crop) if normalize else crop


def _tf_window(first, count, in_size, out_size):
    """A source range [lo, hi) holding every pixel an antialiased bicubic resize from `in_size` to `out_size` reads
    for its output pixels first..first+count-1 (integer tensors; a margin of a pixel either side)."""
    import tensorflow as tf

    support = tf.maximum(tf.constant(2, tf.int64), (2 * in_size + out_size - 1) // out_size)
    lo = tf.maximum(tf.constant(0, tf.int64), ((2 * first + 1) * in_size) // (2 * out_size) - support - 2)
    hi = tf.minimum(in_size, ((2 * (first + count) - 1) * in_size) // (2 * out_size) + support + 3)
    return lo, hi


def _transform_tf(image, size, normalize, crop_pct):
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or (image.shape[-1] is not None and image.shape[-1] != 3):
        raise _shape_error(image.shape)
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    short = tf.constant(short_side(size, crop_pct), tf.int64)
    new_h, new_w = _resized_shape(height, width, tf.minimum(height, width), short)
    top, left = _crop_offset(new_h - size), _crop_offset(new_w - size)
    # Only the crop is computed, from the source rows and columns it reads: tf.image.resize's own kernel
    # (ScaleAndTranslate, antialiased Keys cubic) with the crop's offset as a translation, so an extreme aspect
    # ratio never materialises the full resize. PIL resamples the width first, then the height, rounding to uint8
    # after each pass: so do we.
    r0, r1 = _tf_window(top, size, height, new_h)
    c0, c1 = _tf_window(left, size, width, new_w)
    region = tf.cast(image[r0:r1, c0:c1][None], tf.float32)
    f32 = lambda x: tf.cast(x, tf.float32)  # noqa: E731
    scale_w = f32(new_w) / f32(width)  # what tf.image.resize computes: float32 output / input size
    scale_h = f32(new_h) / f32(height)
    passes = (
        (
            tf.stack([r1 - r0, tf.constant(size, tf.int64)]),
            tf.stack([1.0, scale_w]),
            tf.stack([0.0, f32(c0) * scale_w - f32(left)]),
        ),
        (tf.constant([size, size], tf.int64), tf.stack([scale_h, 1.0]), tf.stack([f32(r0) * scale_h - f32(top), 0.0])),
    )
    for target, scale, translation in passes:
        region = tf.raw_ops.ScaleAndTranslate(
            images=region,
            size=tf.cast(target, tf.int32),
            scale=scale,
            translation=translation,
            kernel_type="keyscubic",
            antialias=True,
        )
        region = tf.clip_by_value(tf.round(region), 0.0, 255.0)
    cropped = tf.ensure_shape(region[0], [size, size, 3])
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
