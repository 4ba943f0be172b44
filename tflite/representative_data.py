"""Images for int8 calibration and accuracy checks: RGB float32 in [0, 255] at the model's input size.

Takes every `--dataset` the training command accepts (`digits`, a folder of class sub-folders, a tfds
name) through the training package's own sources and evaluation transform (`keras_cmt.training.data`:
short side resized to size / crop_pct, bicubic, centre crop; crop_pct 1.0 for digits, as trained), so
calibration and evaluation see exactly the images the model was validated on. A `.npz` / `.npy` file
of images (key `images`, optional `labels`) is accepted too.
"""

from __future__ import annotations

import os

import numpy as np


def default_crop_pct(dataset: str) -> float:
    return 1.0 if dataset == "digits" else 0.875


def _from_training_pipeline(dataset, image_size, limit, split, seed, data_dir, crop_pct):
    from keras_cmt.training import data

    source = data.resolve_source(dataset, data_dir=data_dir, split_seed=seed)
    if split == "train":
        ds = source.train_fn(None)
    elif split in ("validation", "val"):
        ds = source.val_fn()
    else:
        raise ValueError(f"unknown split {split!r}: expected train or validation")
    if crop_pct is None:
        crop_pct = default_crop_pct(dataset)
    ds = ds.map(data.eval_transform(source, image_size, crop_pct))
    if source.encoded:
        ds = ds.ignore_errors()
    images, labels = [], []
    for image, label in ds.take(limit if limit else -1):
        images.append(np.clip(np.asarray(image, dtype=np.float32), 0.0, 255.0))
        labels.append(int(label))
    if not images:
        raise ValueError(f"dataset {dataset!r} gave no {split} images")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _from_array_file(path: str, image_size: int, limit):
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        images = data["images"] if "images" in data.files else data[data.files[0]]
        labels = data["labels"] if "labels" in data.files else np.full(len(images), -1)
    else:
        images, labels = data, np.full(len(data), -1)
    images = np.asarray(images[:limit], dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise ValueError(
            f"{path}: images must be (N, {image_size}, {image_size}, 3) RGB in [0, 255], got {images.shape}"
        )
    return images, np.asarray(labels[:limit])


def load_images(
    dataset: str, image_size: int, limit=200, split: str = "train", seed: int = 0, data_dir=None, crop_pct=None
):
    """(images [N, S, S, 3] float32 in [0, 255], labels [N]) from a dataset name, folder or array file."""
    if not dataset:
        raise ValueError("no representative dataset given")
    dataset = os.fspath(dataset)
    if dataset.endswith((".npz", ".npy")):
        if not os.path.isfile(dataset):
            raise FileNotFoundError(f"representative data file not found: {dataset}")
        return _from_array_file(dataset, image_size, limit)
    return _from_training_pipeline(dataset, image_size, limit, split, seed, data_dir, crop_pct)


def digits(image_size: int, split: str = "train"):
    """scikit-learn's digits as the training command sees them (1,437 train / 360 validation images)."""
    return load_images("digits", image_size, limit=None, split=split)
