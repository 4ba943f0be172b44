"""Datasets for training: a tfds name, a folder of class sub-folders, or `digits`, as tf.data pipelines.

`resolve_source` checks the `--dataset` argument and scans what it names before any training starts, so that an
unknown name or an empty folder is a one-line error. `train_dataset` / `val_dataset` build the per-replica
pipelines (parallel decode, shuffle, per-replica batches from the global batch, prefetch, autotune) that
`strategy.distribute_datasets_from_function` calls once per input pipeline (one per worker).

Validation is exact under every strategy: each pipeline takes its share of the split, then an endless stream of
zero-weight padding, and `validation_steps = ceil(n / global_batch)`; so every worker runs the same number of steps
(no collective waits forever) and every real image counts once (metrics honour the sample weight).
"""

import concurrent.futures
import dataclasses
import math
import os
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from keras_cmt.training import augment, rand_augment

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_VAL_DIR_NAMES = ("val", "validation", "test")


class DatasetError(ValueError):
    """A `--dataset` that cannot be used; the message is one line naming the cause."""


@dataclasses.dataclass
class Source:
    """Where examples come from. `train_fn(input_context)` returns this input pipeline's share of the training split
    and `val_fn()` the whole validation split, as (image, label) datasets where image is encoded bytes
    (`encoded=True`) or a uint8 (H, W, 3) array."""

    name: str
    num_classes: int
    num_train: int
    num_val: int
    encoded: bool
    train_fn: Callable[[Optional[tf.distribute.InputContext]], tf.data.Dataset]
    val_fn: Callable[[], tf.data.Dataset]
    class_names: Optional[List[str]] = None
    skipped_files: int = 0


# --------------------------------------------------------------------------------------------------- sources


def _stratified_split(labels, val_fraction, seed):
    """Indices (train, val): scikit-learn's stratified split, deterministic for a seed."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if val_fraction <= 0 or len(labels) * val_fraction < len(np.unique(labels)) or counts[counts > 0].min() < 2:
        # Too few images to stratify: hold out every k-th image instead.
        step = max(2, int(round(1 / max(val_fraction, 1e-9))))
        val = np.arange(len(labels))[::step] if val_fraction > 0 else np.array([], np.int64)
        return np.setdiff1d(np.arange(len(labels)), val), val
    train, val = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels,
                                  random_state=seed)
    return np.sort(train), np.sort(val)


def digits_source(val_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download), as uint8 RGB.

    Held-out split: a stratified `val_fraction` (0.2 gives 1,437 train / 360 validation images).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = data.target.astype(np.int64)
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)

    def train_fn(input_context=None):
        return _shard(tf.data.Dataset.from_tensor_slices((images[train_idx], labels[train_idx])), input_context)

    def val_fn():
        return tf.data.Dataset.from_tensor_slices((images[val_idx], labels[val_idx]))

    return Source("digits", 10, len(train_idx), len(val_idx), False, train_fn, val_fn,
                  class_names=[str(i) for i in range(10)])


def _is_image_file(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(m) for m in _MAGIC)


def _scan_classes(root, class_names=None):
    """(paths, labels, class_names, skipped) for root/<class>/<files>; non-image files are skipped and counted."""
    if class_names is None:
        class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    candidates, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue
        for dirpath, _, files in os.walk(class_dir, followlinks=True):
            for f in sorted(files):
                candidates.append(os.path.join(dirpath, f))
                labels.append(label)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        ok = list(pool.map(_is_image_file, candidates, chunksize=256))
    paths = [p for p, good in zip(candidates, ok) if good]
    kept_labels = [lab for lab, good in zip(labels, ok) if good]
    skipped = [p for p, good in zip(candidates, ok) if not good]
    if skipped:
        logging.warning("Skipping %d non-image file(s) under %s, e.g. %s", len(skipped), root,
                        ", ".join(skipped[:3]))
    return paths, np.array(kept_labels, dtype=np.int64), class_names, len(skipped)


def folder_source(root, val_fraction=0.2, seed=0):
    """A folder of class sub-folders (root/<class>/*.jpg), or root/train/<class> with root/val|validation/<class>.

    With no val folder, a stratified `val_fraction` of each class is held out. No conversion step.
    """
    root = os.path.abspath(root)
    val_dir = next((os.path.join(root, d) for d in _VAL_DIR_NAMES if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(os.path.join(root, "train")) and val_dir:
        paths, labels, class_names, skipped = _scan_classes(os.path.join(root, "train"))
        val_paths, val_labels, _, val_skipped = _scan_classes(val_dir, class_names)
        skipped += val_skipped
    else:
        all_paths, all_labels, class_names, skipped = _scan_classes(root)
        if len(all_paths) == 0:
            paths = val_paths = []
        else:
            train_idx, val_idx = _stratified_split(all_labels, val_fraction, seed)
            paths = [all_paths[i] for i in train_idx]
            labels = all_labels[train_idx]
            val_paths = [all_paths[i] for i in val_idx]
            val_labels = all_labels[val_idx]
    if not class_names or len(paths) == 0:
        raise DatasetError(f"--dataset={root}: no images found in class sub-folders (expected {root}/<class>/*.jpg)")
    if len(val_paths) == 0:
        raise DatasetError(f"--dataset={root}: no validation images (add a val/ folder or raise --val_fraction)")
    logging.info("Folder %s: %d training and %d validation images in %d classes (%d non-image files skipped)",
                 root, len(paths), len(val_paths), len(class_names), skipped)

    def read(path, label):
        return tf.io.read_file(path), label

    def train_fn(input_context=None):
        ds = _shard(tf.data.Dataset.from_tensor_slices((np.array(paths), np.array(labels))), input_context)
        return ds.map(read, num_parallel_calls=AUTOTUNE)

    def val_fn():
        ds = tf.data.Dataset.from_tensor_slices((np.array(val_paths), np.array(val_labels)))
        return ds.map(read, num_parallel_calls=AUTOTUNE)

    return Source(os.path.basename(root), len(class_names), len(paths), len(val_paths), True,
                  train_fn, val_fn, class_names=class_names, skipped_files=skipped)


def tfds_source(name, data_dir=None, manual_dir=None, train_split="train", val_split=None, seed=0):
    """A TensorFlow Datasets dataset with `image` and `label` features, decoded here (not by tfds) for speed."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(f"--dataset={name}: unknown dataset (not 'digits', not an existing folder, not a tfds "
                           "dataset name)") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetError(f"--dataset={name}: the tfds dataset has no 'image' and 'label' features")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=download_config)
    splits = builder.info.splits
    decoders = {"image": tfds.decode.SkipDecoding()}
    if splits:
        if val_split is None:
            val_split = next((s for s in ("validation", "test") if s in splits), None)
            if val_split is None:
                raise DatasetError(f"--dataset={name}: no 'validation' or 'test' split; name one with --val_split")
        for split in (train_split, val_split):
            if split not in splits:
                raise DatasetError(f"--dataset={name}: no split {split!r} (has {', '.join(splits)})")
        num_train, num_val = splits[train_split].num_examples, splits[val_split].num_examples
        num_train_shards = splits[train_split].num_shards
    else:
        # Split sizes missing from the metadata (e.g. tfds.testing.mock_data): count the examples.
        val_split = val_split or "validation"

        def count(split):
            ds = builder.as_dataset(split=split, decoders=decoders)
            n = int(ds.cardinality())
            return n if n >= 0 else int(ds.reduce(0, lambda c, _: c + 1))

        num_train, num_val, num_train_shards = count(train_split), count(val_split), 1

    def to_pair(example):
        return example["image"], example["label"]

    def train_fn(input_context=None):
        read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16, try_autocache=False)
        # Shard by file where there are enough files (each worker reads only its files), else by example.
        by_file = bool(input_context) and 1 < input_context.num_input_pipelines <= num_train_shards
        if by_file:
            read_config.input_context = input_context
        ds = builder.as_dataset(split=train_split, shuffle_files=True, decoders=decoders, read_config=read_config)
        if not by_file:
            ds = _shard(ds, input_context)
        return ds.map(to_pair, num_parallel_calls=AUTOTUNE)

    def val_fn():
        return builder.as_dataset(split=val_split, shuffle_files=False, decoders=decoders).map(
            to_pair, num_parallel_calls=AUTOTUNE)

    return Source(name, features["label"].num_classes, num_train, num_val, True, train_fn, val_fn,
                  class_names=features["label"].names)


def resolve_source(dataset, data_dir=None, manual_dir=None, val_fraction=0.2, train_split="train",
                   val_split=None, seed=0, split_seed=0):
    """Turns `--dataset` into a Source: 'digits', an existing folder, or a tfds name (checked in that order).

    `split_seed` draws the held-out split of digits and of folders without val/ (the same images for every
    training seed, so that runs with different seeds are validated, and their TFLite files evaluated, on one
    split); `seed` shuffles a tfds dataset's files."""
    if not dataset:
        raise DatasetError("--dataset is empty: give 'digits', a folder of class sub-folders or a tfds name")
    if dataset == "digits":
        return digits_source(val_fraction, split_seed)
    if os.path.isdir(dataset):
        return folder_source(dataset, val_fraction, split_seed)
    if os.sep in dataset or dataset.startswith("."):
        raise DatasetError(f"--dataset={dataset}: no such folder")
    return tfds_source(dataset, data_dir, manual_dir, train_split, val_split, seed)


# ------------------------------------------------------------------------------------------------- pipelines


def _shard(ds, input_context):
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def _per_replica_batch(global_batch, input_context):
    return input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch


def _options(deterministic=False):
    options = tf.data.Options()
    # Validation must stay in order: a parallel map out of order would let padding overtake real images.
    options.deterministic = deterministic
    # Sharding is done by hand (per input pipeline), so tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(source, recipe, global_batch, input_context=None, seed=None, shuffle_buffer=None):
    """Endless, shuffled, augmented batches of (normalised images, one-hot labels) for one input pipeline."""
    size = recipe.image_size
    per_replica = _per_replica_batch(global_batch, input_context)
    ds = source.train_fn(input_context)
    ds = ds.shuffle(shuffle_buffer or min(source.num_train, 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat()

    def transform(image, label):
        if source.encoded:
            image = augment.decode_random_resized_crop(image, size, recipe.crop_scale_min)
        else:
            image = augment.random_resized_crop(image, size, recipe.crop_scale_min)
        if recipe.hflip:
            image = tf.image.random_flip_left_right(image)
        if recipe.randaugment_magnitude > 0:
            image = rand_augment.rand_augment(image, recipe.randaugment_magnitude, recipe.randaugment_magnitude_std,
                                              recipe.randaugment_ops)
        return image, label

    ds = ds.map(transform, num_parallel_calls=AUTOTUNE)
    if source.encoded:
        ds = ds.ignore_errors(log_warning=True)  # a corrupt image is logged and skipped, never a crash
    ds = ds.batch(per_replica, drop_remainder=True)
    ds = ds.map(augment.BatchAugment(recipe, source.num_classes, seed=seed), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def eval_transform(source, image_size, crop_pct):
    def transform(image, label):
        if source.encoded:
            image = augment.decode(image)
        return augment.center_crop(image, image_size, crop_pct), label

    return transform


def val_dataset(source, image_size, crop_pct, global_batch, input_context=None):
    """(normalised images, one-hot labels, weights) batches: this pipeline's share of the split, then zero-weight
    padding without end; run it for `validation_steps(source, global_batch)` steps."""
    per_replica = _per_replica_batch(global_batch, input_context)
    ds = _shard(source.val_fn(), input_context)
    ds = ds.map(eval_transform(source, image_size, crop_pct), num_parallel_calls=AUTOTUNE)
    if source.encoded:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.map(lambda x, y: (x, tf.cast(y, tf.int64), tf.constant(1.0)))
    pad = tf.data.Dataset.from_tensors(
        (tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(0, tf.int64), tf.constant(0.0))).repeat()
    ds = ds.concatenate(pad).batch(per_replica, drop_remainder=True)
    num_classes = source.num_classes

    def finish(x, y, w):
        return augment.normalize(x), tf.one_hot(y, num_classes, dtype=tf.float32), w

    return ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE).with_options(_options(deterministic=True))


def steps_per_epoch(source, global_batch):
    return max(1, source.num_train // global_batch)


def validation_steps(source, global_batch):
    return max(1, math.ceil(source.num_val / global_batch))
