"""Image transforms of the CMT recipe: per-image crops in tf.data, then Keras' own batch augmentation layers.

Per image (written here, because Keras 3.15 has no random-resized-crop layer and no crop-from-JPEG decode):
  train: random resized crop (area scale, aspect 3/4..4/3, bicubic) and horizontal flip;
  eval: the official centre crop (resize the short side to size / crop_pct, bicubic, then crop).
Per image, RandAugment as timm's (`training/rand_augment.py`, in the per-image stage of `data.train_dataset`).
Per batch: colour jitter (Keras' layer; only without RandAugment, as in timm), normalisation with the ImageNet
mean/std, random erasing, then Mixup or CutMix (Keras' layers; one per batch, switch probability). Random erasing is
written here: the official recipe's (timm's `RandomErasing(mode="pixel")`) erases after normalisation with
per-pixel N(0, 1) noise over a box of 2-33% of the image with a log-uniform aspect ratio in 0.3..3.3, and Keras'
`RandomErasing` works in pixel values with noise scaled by the value range and boxes of another distribution. Label
smoothing is the loss's job (CategoricalCrossentropy(label_smoothing=...)) and commutes with Mixup/CutMix.
"""

import math

import keras
import tensorflow as tf
from PIL import Image

from keras_cmt import image_transforms
from keras_cmt.preprocessing import IMAGENET_MEAN, IMAGENET_STD

_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _resize_bicubic(image, height, width):
    # antialias=True matches PIL's bicubic when shrinking (what torchvision's transforms use on PIL images).
    image = tf.image.resize(image, [height, width], method="bicubic", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def _crop_window(shape, scale_min, seed=None):
    """A random crop window (offset_y, offset_x, h, w) covering `scale_min`..1 of the area, aspect 3/4..4/3.
    Unlike TensorFlow's other random ops, this one ignores the global seed: without `seed` it is never repeatable."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        min_object_covered=0.0,
        aspect_ratio_range=_RATIO,
        area_range=(scale_min, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    return begin[0], begin[1], size[0], size[1]


def _unsigned(encoded, start, length, little_endian):
    """The unsigned integer stored in bytes [start, start + length) of a string tensor (0 if it is shorter)."""
    raw = tf.io.decode_raw(tf.strings.substr(encoded, start, length), tf.uint8)
    raw = tf.cast(tf.pad(raw, [[0, length - tf.shape(raw)[0]]]), tf.int64)
    weights = tf.constant([256 ** (i if little_endian else length - 1 - i) for i in range(length)], tf.int64)
    return tf.reduce_sum(raw * weights)


def declared_pixels(encoded):
    """Width x height as the image's header declares them, read without decoding: JPEG (its frame header), PNG
    (IHDR), GIF (logical screen), BMP (info header); 0 for anything else."""
    magic = tf.strings.substr(encoded, 0, 4)

    def png():
        return _unsigned(encoded, 16, 4, False) * _unsigned(encoded, 20, 4, False)

    def gif():
        return _unsigned(encoded, 6, 2, True) * _unsigned(encoded, 8, 2, True)

    def bmp():
        height = _unsigned(encoded, 22, 4, True)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # negative: a top-down bitmap
        return _unsigned(encoded, 18, 4, True) * height

    def jpeg():
        return tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64))

    return tf.case(
        [
            (tf.io.is_jpeg(encoded), jpeg),
            (tf.equal(magic, b"\x89PNG"), png),
            (tf.equal(tf.strings.substr(encoded, 0, 3), b"GIF"), gif),
            (tf.equal(tf.strings.substr(encoded, 0, 2), b"BM"), bmp),
        ],
        default=lambda: tf.constant(0, tf.int64),
    )


def check_declared_size(encoded):
    """`encoded`, after refusing an image that declares more pixels than Pillow's decompression-bomb limit (what
    `keras_cmt.load_image` refuses too): a tf.data error, which the pipelines skip and log like a corrupt file,
    before TensorFlow allocates the decoded image."""
    if Image.MAX_IMAGE_PIXELS is None:  # the user switched Pillow's limit off: so do we
        return encoded
    pixels = declared_pixels(encoded)
    with tf.control_dependencies(
        [
            tf.debugging.assert_less_equal(
                pixels,
                tf.constant(Image.MAX_IMAGE_PIXELS, tf.int64),
                message="image declares more pixels than Pillow's decompression-bomb limit",
            )
        ]
    ):
        return tf.identity(encoded)


def decode(encoded):
    """Decodes JPEG/PNG/GIF/BMP bytes to a uint8 RGB (H, W, 3) tensor (grey and RGBA converted); refuses
    decompression bombs first (`check_declared_size`)."""
    image = tf.io.decode_image(check_declared_size(encoded), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def random_resized_crop(image, size, scale_min=0.08, seed=None):
    """Random resized crop of a decoded (H, W, C) image to (size, size), float32 in [0, 255]."""
    oy, ox, h, w = _crop_window(tf.shape(image), scale_min, seed)
    crop = tf.slice(image, tf.stack([oy, ox, 0]), tf.stack([h, w, -1]))
    image = _resize_bicubic(tf.cast(crop, tf.float32), size, size)
    image.set_shape([size, size, 3])
    return image


def decode_random_resized_crop(encoded, size, scale_min=0.08, seed=None):
    """Random resized crop from encoded bytes; JPEGs decode only the cropped window. Decompression bombs are
    refused first (`check_declared_size`)."""
    encoded = check_declared_size(encoded)

    def from_jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        oy, ox, h, w = _crop_window(shape, scale_min, seed)
        crop = tf.image.decode_and_crop_jpeg(encoded, tf.stack([oy, ox, h, w]), channels=3)
        return _resize_bicubic(tf.cast(crop, tf.float32), size, size)

    def from_other():
        return random_resized_crop(decode(encoded), size, scale_min, seed)

    image = tf.cond(tf.io.is_jpeg(encoded), from_jpeg, from_other)
    image.set_shape([size, size, 3])
    return image


def center_crop(image, size, crop_pct=0.875):
    """The official eval transform (`keras_cmt.image_transforms.eval_transform`): resize the short side to
    int(size / crop_pct) (bicubic, as PIL), centre-crop size; float32 (size, size, 3) in [0, 255], whole numbers."""
    return image_transforms.eval_transform(tf.convert_to_tensor(image), size, normalize=False, crop_pct=crop_pct)


def random_erasing(images, probability, seed=None, min_area=0.02, max_area=1 / 3, min_aspect=0.3, attempts=10):
    """timm's `RandomErasing(probability, mode="pixel", max_count=1)` on a batch of normalised (B, H, W, C) images.

    Per image, with `probability`: up to `attempts` boxes are drawn (area U(min_area, max_area) of the image, aspect
    ratio log-uniform in [min_aspect, 1 / min_aspect], height and width rounded); the first that fits inside the
    image is placed uniformly and filled with per-pixel, per-channel N(0, 1) noise; when none fits, the image is
    left as it is.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)

    # Stateful random ops (as tf.data's other augmentations): each draws anew on every batch.
    def uniform(shape, low=0.0, high=1.0, offset=0):
        return tf.random.uniform(shape, low, high, seed=None if seed is None else seed + offset)

    area = uniform([batch, attempts], min_area, max_area, 1) * h * w
    log_aspect = math.log(min_aspect)
    aspect = tf.exp(uniform([batch, attempts], log_aspect, -log_aspect, 2))
    box_h = tf.round(tf.sqrt(area * aspect))
    box_w = tf.round(tf.sqrt(area / aspect))
    fits = (box_h < h) & (box_w < w)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    box_h = tf.gather(box_h, first, batch_dims=1)
    box_w = tf.gather(box_w, first, batch_dims=1)
    top = tf.floor(uniform([batch], offset=3) * (h - box_h + 1))  # randint(0, H - h), both ends included
    left = tf.floor(uniform([batch], offset=4) * (w - box_w + 1))
    erase = (uniform([batch], offset=5) < probability) & tf.reduce_any(fits, axis=1)
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]
    noise = tf.random.normal(shape, seed=None if seed is None else seed + 6)
    return tf.where(mask[..., None], noise, images)


def normalize(images):
    """RGB in [0, 255] -> (x / 255 - mean) / std, the input `keras_cmt.preprocess_input` produces."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


class BatchAugment:
    """The recipe's batch-level augmentation, built from Keras layers; call on (uint8-range images, int labels).

    Returns normalised float32 images and (mixed) one-hot float32 labels.
    """

    def __init__(self, recipe, num_classes, seed=None):
        self.num_classes = int(num_classes)
        self.mix_switch_prob = float(recipe.mix_switch_prob)
        self.color_jitter = None
        self.mixup = None
        self.cutmix = None
        if recipe.randaugment_magnitude <= 0 and recipe.color_jitter > 0:  # RandAugment runs per image (data.py)
            self.color_jitter = keras.layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=recipe.color_jitter,
                contrast_factor=recipe.color_jitter,
                seed=seed,
            )
        self.random_erasing = float(recipe.random_erasing)
        self.seed = seed
        if recipe.mixup > 0:
            self.mixup = keras.layers.MixUp(alpha=recipe.mixup, seed=seed)
        if recipe.cutmix > 0:
            self.cutmix = keras.layers.CutMix(factor=recipe.cutmix, seed=seed)

    def __call__(self, images, labels):
        images = tf.cast(images, tf.float32)
        if self.color_jitter is not None:
            images = self.color_jitter(images, training=True)
        images = normalize(images)
        if self.random_erasing > 0:
            images = random_erasing(images, self.random_erasing, seed=self.seed)
        labels = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=tf.float32)
        return self.mix(images, labels)

    def mix(self, images, labels):
        def apply(layer):
            out = layer({"images": images, "labels": labels}, training=True)
            return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

        if self.mixup is not None and self.cutmix is not None:
            use_cutmix = tf.random.uniform([]) < self.mix_switch_prob
            return tf.cond(use_cutmix, lambda: apply(self.cutmix), lambda: apply(self.mixup))
        if self.mixup is not None:
            return apply(self.mixup)
        if self.cutmix is not None:
            return apply(self.cutmix)
        return images, labels
