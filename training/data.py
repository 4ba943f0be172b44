"""Datasets for training: a tfds name, a folder of class sub-folders, or `digits`, as tf.data pipelines.

`resolve_source` checks the `--dataset` argument and scans what it names before any training starts, so that an
unknown name, an empty folder or class, one class, or links that loop into other classes are a one-line error (see
`_Walk` for which links are followed). `train_dataset` / `val_dataset` build the per-replica
pipelines (parallel decode, shuffle, per-replica batches from the global batch, prefetch, autotune) that
`strategy.distribute_datasets_from_function` calls once per input pipeline (one per worker).

Validation is exact under every strategy: each pipeline takes its share of the split, then an endless stream of
zero-weight padding, and `validation_steps = ceil(n / global_batch)`; so every worker runs the same number of steps
(no collective waits forever) and every real image counts once (metrics honour the sample weight).
"""

import array
import bisect
import collections
import concurrent.futures
import dataclasses
import math
import os
import re
import stat
import warnings
import zlib
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from keras_cmt.training import augment, rand_augment

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
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
    origin: Optional[str] = None  # the folder, for messages


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
    train, val = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed)
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

    return Source(
        "digits", 10, len(train_idx), len(val_idx), False, train_fn, val_fn, class_names=[str(i) for i in range(10)]
    )


def _utf8(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(path):
    """`path` as it can be printed on one line: itself, or its repr when it is not UTF-8 or not printable."""
    return path if _utf8(path) and path.isprintable() else repr(path)


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _jpeg_size(f):
    """(width, height) from a JPEG's frame header, walking the marker segments before it; None if malformed.

    Written here because Pillow's parser reads these segments byte by byte, several times slower over a whole
    ImageNet scan."""
    offset = 2
    while True:
        f.seek(offset)
        head = f.read(4)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            offset += 2
            continue
        if marker in (0xD9, 0xDA) or len(head) < 4:  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(head[2:4], "big")
        if length < 2:
            return None
        if marker in _JPEG_FRAMES:
            frame = f.read(6)
            if length < 8 or len(frame) < 6 or length != 8 + 3 * frame[5] or frame[5] not in (1, 3, 4):
                return None
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        offset += 2 + length


def _png_size(f):
    """(width, height) from a PNG's IHDR chunk, its CRC and fields checked; None if malformed."""
    f.seek(8)
    chunk = f.read(25)
    if (
        len(chunk) < 25
        or chunk[:8] != b"\x00\x00\x00\rIHDR"
        or zlib.crc32(chunk[4:21]) != int.from_bytes(chunk[21:25], "big")
    ):
        return None
    depth, colour, compression, filtering, interlace = chunk[16:21]
    if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        return None
    return int.from_bytes(chunk[8:12], "big"), int.from_bytes(chunk[12:16], "big")


def _pillow_size(f, fmt):
    with Image.open(f, formats=(fmt,)) as image:  # reads the header only
        return image.size


def _is_image_file(path):
    """None when `path` has the signature and a well-formed header of a format the pipelines decode, with no more
    pixels than Pillow's decompression-bomb limit (what `augment.check_declared_size` refuses); else why not.

    Only the header is read (no pixels are decoded), so that a file with an image's signature followed by
    garbage is counted as corrupt here rather than failing at every decode attempt of training."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            fmt = next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)
            if fmt is None:
                return "not an image"
            size = _jpeg_size(f) if fmt == "JPEG" else _png_size(f) if fmt == "PNG" else _pillow_size(f, fmt)
    except Image.DecompressionBombError:
        return "too many pixels"
    except Exception:  # any failure to parse the header: Pillow raises many kinds
        return "corrupt header"
    if size is None or size[0] <= 0 or size[1] <= 0:
        return "corrupt header"
    if Image.MAX_IMAGE_PIXELS is not None and size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
        return "too many pixels"
    return None


class _Walk:
    """Every real file under the class folders once, labelled by the one class folder it lies in.

    Directories are visited once each (by st_dev/st_ino), so links that loop cost one stat. A symbolic link is
    followed when it resolves inside its own class folder (what it reaches is there anyway and duplicates are
    dropped) or somewhere unrelated to the dataset (an extra folder of that class's images elsewhere); a link
    into the dataset folder outside its class folder, into or above another class folder, or above the dataset
    is refused in one line naming it, because its images would be counted twice or under another class's label.
    A broken link, a name that is not UTF-8 (TensorFlow cannot read the path) and anything that is not a regular
    file are skipped and counted like a corrupt file."""

    def __init__(self, dataset_root, class_reals):
        self.dataset_root = dataset_root
        self.dataset_real = os.path.realpath(dataset_root)
        self.class_seps = sorted(r.rstrip(os.sep) + os.sep for r in class_reals)  # not nested (checked)
        self.visited = set()
        self.paths, self.labels = [], []
        self.devs, self.inodes = array.array("Q"), array.array("Q")
        self.skipped = []  # (path, label, reason)

    def _related(self, target):
        """Whether `target` lies inside or above the dataset folder or any class folder."""
        t = target.rstrip(os.sep) + os.sep
        if _inside(target, self.dataset_real) or _inside(self.dataset_real, target):
            return True
        i = bisect.bisect_right(self.class_seps, t) - 1
        if i >= 0 and t.startswith(self.class_seps[i]):
            return True
        j = bisect.bisect_left(self.class_seps, t)
        return j < len(self.class_seps) and self.class_seps[j].startswith(t)

    def _file(self, shown, label, st_dev, st_ino):
        if not _utf8(shown):
            self.skipped.append((shown, label, "name is not UTF-8"))
            return
        self.paths.append(shown)
        self.labels.append(label)
        self.devs.append(st_dev)
        self.inodes.append(st_ino)

    def walk(self, class_dir, class_real, label):
        stack = [(class_dir, class_real)]
        while stack:
            shown_dir, real_dir = stack.pop()
            try:
                st = os.stat(real_dir)
                key = (st.st_dev, st.st_ino)
                if key in self.visited:
                    continue
                self.visited.add(key)
                entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
            except OSError:
                self.skipped.append((shown_dir, label, "unreadable folder"))
                continue
            subdirs = []
            for entry in entries:
                shown = os.path.join(shown_dir, entry.name)
                try:
                    if entry.is_symlink():
                        try:
                            target_st = os.stat(entry.path)
                        except OSError:
                            self.skipped.append((shown, label, "broken link"))
                            continue
                        target = os.path.realpath(entry.path)
                        if not _inside(target, class_real) and self._related(target):
                            raise DatasetError(
                                f"--dataset={_show(self.dataset_root)}: symbolic link {_show(shown)} points to "
                                f"{_show(target)}, outside its class folder {_show(class_dir)} and inside or above "
                                "the dataset or another class folder (its images would be counted twice or under "
                                "another label); remove the link"
                            )
                        if stat.S_ISDIR(target_st.st_mode):
                            subdirs.append((shown, target))
                        elif stat.S_ISREG(target_st.st_mode):
                            self._file(shown, label, target_st.st_dev, target_st.st_ino)
                        else:
                            self.skipped.append((shown, label, "not a regular file"))
                    elif entry.is_dir(follow_symlinks=False):
                        subdirs.append((shown, entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        self._file(shown, label, st.st_dev, entry.inode())
                    else:
                        self.skipped.append((shown, label, "not a regular file"))
                except OSError:
                    self.skipped.append((shown, label, "unreadable"))
            stack.extend(reversed(subdirs))  # popped in name order

    def unique(self):
        """Drops later copies of the same file (hard or symbolic links within a class); the same file in two
        classes is refused in one line naming both."""
        labels = np.array(self.labels, dtype=np.int64)
        if not self.paths:
            return [], labels, np.zeros((0, 2), np.uint64)
        keys = np.stack([np.frombuffer(self.devs, np.uint64), np.frombuffer(self.inodes, np.uint64)], axis=1)
        order = np.lexsort((np.arange(len(keys)), keys[:, 1], keys[:, 0]))
        sorted_keys = keys[order]
        same = np.all(sorted_keys[1:] == sorted_keys[:-1], axis=1)
        duplicate = np.zeros(len(keys), bool)
        first = order.copy()
        for k in np.flatnonzero(same) + 1:  # runs of equal keys: each points back at its run's first
            first[k] = first[k - 1]
        for k in np.flatnonzero(same) + 1:
            i, j = first[k], order[k]
            if labels[i] != labels[j]:
                raise DatasetError(
                    f"--dataset={_show(self.dataset_root)}: {_show(self.paths[j])} and "
                    f"{_show(self.paths[i])} are the same file in two class folders"
                )
            duplicate[j] = True
        if duplicate.any():
            logging.info(
                "Dropped %d duplicate(s) (links to the same file) under %s",
                int(duplicate.sum()),
                _show(self.dataset_root),
            )
        keep = np.flatnonzero(~duplicate)
        return [self.paths[i] for i in keep], labels[keep], keys[keep]


def _class_folders(root, class_names):
    """{name: (folder, real path)} of root's class folders; non-UTF-8 names and nested or shared folders refused."""
    if class_names is None:
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            raise DatasetError(f"--dataset={_show(root)}: cannot list the folder ({e.strerror})") from None
        class_names = []
        for name in names:
            path = os.path.join(root, name)
            if name.startswith("."):  # hidden (.git, .ipynb_checkpoints): never a class
                continue
            if os.path.islink(path) and not os.path.exists(path):
                logging.warning("Ignoring the broken link %s (not a class folder)", _show(path))
                continue
            if not os.path.isdir(path):
                continue
            if not _utf8(name) or "\n" in name or "\r" in name:
                raise DatasetError(
                    f"--dataset={_show(root)}: class folder name {name!r} is not one line of valid UTF-8; rename it"
                )
            class_names.append(name)
    folders = {
        name: (os.path.join(root, name), os.path.realpath(os.path.join(root, name)))
        for name in class_names
        if os.path.isdir(os.path.join(root, name))
    }
    previous = None
    for real_sep, name in sorted((real.rstrip(os.sep) + os.sep, name) for name, (_, real) in folders.items()):
        if previous is not None and real_sep.startswith(previous[0]):
            raise DatasetError(
                f"--dataset={_show(root)}: class folders {_show(folders[previous[1]][0])} and "
                f"{_show(folders[name][0])} are the same folder or one inside the other"
            )
        previous = (real_sep, name)
    return class_names, folders


def _scan_classes(root, class_names=None, dataset_root=None):
    """(paths, labels, class_names, skipped, keys) for root/<class>/<files>, each real file once.

    Files that are not images (by signature and header), broken links, names that are not UTF-8 and other
    non-files are skipped, counted and named in a warning; `keys` are the files' (st_dev, st_ino)."""
    class_names, folders = _class_folders(root, class_names)
    walk = _Walk(dataset_root or root, [real for _, real in folders.values()])
    for label, name in enumerate(class_names):
        if name in folders:
            walk.walk(folders[name][0], folders[name][1], label)
    paths, labels, keys = walk.unique()
    with warnings.catch_warnings():  # pixel counts are checked against the limit in _is_image_file
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            reasons = list(pool.map(_is_image_file, paths, chunksize=256))
    good = np.array([r is None for r in reasons], bool)
    skipped = walk.skipped + [(p, lab, r) for p, lab, r in zip(paths, labels, reasons) if r is not None]
    if skipped:
        by_reason = collections.Counter(r for _, _, r in skipped)
        logging.warning(
            "Skipping %d file(s) under %s (%s), e.g. %s",
            len(skipped),
            _show(root),
            ", ".join(f"{n} {r}" for r, n in sorted(by_reason.items())),
            ", ".join(_show(p) for p, _, _ in skipped[:3]),
        )
    paths = [p for p, ok in zip(paths, good) if ok]
    return (paths, labels[good], class_names, skipped, keys[good])


def _void(keys):
    """(st_dev, st_ino) rows as single comparable items (for np.intersect1d)."""
    return np.ascontiguousarray(keys, np.uint64).view(np.dtype((np.void, 16))).ravel()


def _skip_summary(skipped):
    if not skipped:
        return ""
    return f"; {len(skipped)} file(s) skipped as unusable, e.g. {_show(skipped[0][0])} ({skipped[0][2]})"


def _check_classes(root, class_names, folders_root, labels, skipped):
    """Refuses a class folder without a usable image, naming it."""
    counts = np.bincount(labels, minlength=len(class_names))
    for label in np.flatnonzero(counts == 0):
        in_class = [s for s in skipped if s[1] == label]
        raise DatasetError(
            f"--dataset={_show(root)}: class folder "
            f"{_show(os.path.join(folders_root, class_names[label]))} has no usable image"
            f"{_skip_summary(in_class)}"
        )


def folder_source(root, val_fraction=0.2, seed=0):
    """A folder of class sub-folders (root/<class>/*.jpg), or root/train/<class> with root/val|validation/<class>.

    With no val folder, a stratified `val_fraction` of each class is held out. No conversion step. Refused in one
    line: no usable image, a class folder without one, fewer than two classes, a val/ class that train/ lacks,
    a file in both splits, and the links `_Walk` refuses.
    """
    root = os.path.abspath(root)
    if not _utf8(root) or not root.isprintable():
        raise DatasetError(f"--dataset={root!r}: the folder's path is not one line of valid UTF-8")
    expected = f"(expected {root}/<class>/*.jpg)"
    val_dir = next((os.path.join(root, d) for d in _VAL_DIR_NAMES if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(os.path.join(root, "train")) and val_dir:
        train_dir = os.path.join(root, "train")
        paths, labels, class_names, skipped, keys = _scan_classes(train_dir, dataset_root=root)
        if class_names and len(paths) == 0:
            raise DatasetError(
                f"--dataset={root}: no images found in class sub-folders of {train_dir}{_skip_summary(skipped)}"
            )
        extra = sorted(set(_class_folders(val_dir, None)[0]) - set(class_names))
        if extra:
            raise DatasetError(
                f"--dataset={root}: {_show(os.path.join(val_dir, extra[0]))} has no class folder "
                f"in {train_dir} ({len(extra)} such validation class folder(s))"
            )
        val_paths, val_labels, _, val_skipped, val_keys = _scan_classes(val_dir, class_names, dataset_root=root)
        _, in_both, _ = np.intersect1d(_void(val_keys), _void(keys), return_indices=True)
        if len(in_both):
            raise DatasetError(
                f"--dataset={root}: {_show(val_paths[in_both.min()])} is also a training image (the "
                "same file in train and validation)"
            )
        missing = [class_names[i] for i in np.flatnonzero(np.bincount(val_labels, minlength=len(class_names)) == 0)]
        if missing and len(val_paths):
            logging.warning(
                "%d class(es) have no validation image in %s, e.g. %s",
                len(missing),
                val_dir,
                ", ".join(_show(m) for m in missing[:3]),
            )
        folders_root, scanned_labels, scanned_skipped = train_dir, labels, skipped
        skipped = skipped + val_skipped
    else:
        all_paths, all_labels, class_names, skipped, _ = _scan_classes(root)
        if class_names and len(all_paths) == 0:
            raise DatasetError(
                f"--dataset={root}: no images found in class sub-folders {expected}{_skip_summary(skipped)}"
            )
        if len(all_paths) == 0:
            paths = val_paths = []
        else:
            train_idx, val_idx = _stratified_split(all_labels, val_fraction, seed)
            paths = [all_paths[i] for i in train_idx]
            labels = all_labels[train_idx]
            val_paths = [all_paths[i] for i in val_idx]
            val_labels = all_labels[val_idx]
        folders_root, scanned_labels, scanned_skipped = root, all_labels, skipped
    if not class_names or len(paths) == 0:
        raise DatasetError(f"--dataset={root}: no images found in class sub-folders {expected}")
    _check_classes(root, class_names, folders_root, scanned_labels, scanned_skipped)
    if len(class_names) < 2:
        raise DatasetError(
            f"--dataset={root}: only one class folder ({os.path.join(folders_root, class_names[0])}); "
            "a classifier needs two or more"
        )
    if len(val_paths) == 0:
        raise DatasetError(f"--dataset={root}: no validation images (add a val/ folder or raise --val_fraction)")
    logging.info(
        "Folder %s: %d training and %d validation images in %d classes (%d unusable files skipped)",
        root,
        len(paths),
        len(val_paths),
        len(class_names),
        len(skipped),
    )

    def read(path, label):
        return tf.io.read_file(path), label

    def train_fn(input_context=None):
        ds = _shard(tf.data.Dataset.from_tensor_slices((np.array(paths), np.array(labels))), input_context)
        return ds.map(read, num_parallel_calls=AUTOTUNE)

    def val_fn():
        ds = tf.data.Dataset.from_tensor_slices((np.array(val_paths), np.array(val_labels)))
        return ds.map(read, num_parallel_calls=AUTOTUNE)

    return Source(
        os.path.basename(root),
        len(class_names),
        len(paths),
        len(val_paths),
        True,
        train_fn,
        val_fn,
        class_names=class_names,
        skipped_files=len(skipped),
        origin=root,
    )


def tfds_source(name, data_dir=None, manual_dir=None, train_split="train", val_split=None, seed=0):
    """A TensorFlow Datasets dataset with `image` and `label` features, decoded here (not by tfds) for speed."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(
            f"--dataset={name}: unknown dataset (not 'digits', not an existing folder, not a tfds dataset name)"
        ) from None
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
            to_pair, num_parallel_calls=AUTOTUNE
        )

    return Source(
        name,
        features["label"].num_classes,
        num_train,
        num_val,
        True,
        train_fn,
        val_fn,
        class_names=features["label"].names,
    )


def resolve_source(
    dataset, data_dir=None, manual_dir=None, val_fraction=0.2, train_split="train", val_split=None, seed=0, split_seed=0
):
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
        raise DatasetError(f"--dataset={_show(dataset)}: no such folder")
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
    # No autotuning thread: deleting an iterator waits for that thread's current sleep, which grows to a minute
    # (TensorFlow 2.21). Keras deletes the validation iterator at every evaluation and the training iterator when
    # `fit` returns, so with it a run stalled for up to a minute after its last epoch. Without it, AUTOTUNE
    # parallelism is TensorFlow's default (a call per core) and prefetch keeps its own buffer tuner.
    options.autotune.enabled = False
    # Sharding is done by hand (per input pipeline), so tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(
    source, recipe, global_batch, input_context=None, seed=None, shuffle_buffer=None, deterministic=False
):
    """Endless, shuffled, augmented batches of (normalised images, one-hot labels) for one input pipeline;
    `deterministic`: the same batches on every run of a seed (order kept, the random augmentations drawn in
    sequence: slower)."""
    size = recipe.image_size
    per_replica = _per_replica_batch(global_batch, input_context)
    ds = source.train_fn(input_context)
    ds = ds.shuffle(shuffle_buffer or min(source.num_train, 10_000), seed=seed, reshuffle_each_iteration=True)

    crop_seed = None if seed is None else seed + 1  # 0 would mean "unseeded" to TensorFlow's crop sampler

    def transform(image, label):
        if source.encoded:
            image = augment.decode_random_resized_crop(image, size, recipe.crop_scale_min, crop_seed)
        else:
            image = augment.random_resized_crop(image, size, recipe.crop_scale_min, crop_seed)
        if recipe.hflip:
            image = tf.image.random_flip_left_right(image)
        if recipe.randaugment_magnitude > 0:
            image = rand_augment.rand_augment(
                image, recipe.randaugment_magnitude, recipe.randaugment_magnitude_std, recipe.randaugment_ops
            )
        return image, label

    # Stateful random ops called in parallel draw in the order the calls happen to run.
    random_calls = None if deterministic else AUTOTUNE
    ds = ds.map(transform, num_parallel_calls=random_calls)
    if source.encoded:
        ds = ds.ignore_errors(log_warning=True)  # a corrupt image is logged and skipped, never a crash
    # Errors are dropped within each pass, before repeat(): a pass that yields nothing ends repeat() (where
    # dropping after it would loop forever), and the stream then fails with a message `pipeline_error` reads.
    ds = ds.repeat().concatenate(_exhausted(source, ds.element_spec))
    ds = ds.batch(per_replica, drop_remainder=True)
    ds = ds.map(augment.BatchAugment(recipe, source.num_classes, seed=seed), num_parallel_calls=random_calls)
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic=deterministic))


_EXHAUSTED = "keras_cmt.training.data: no training image decodes"
_EXHAUSTED_RE = re.compile(re.escape(_EXHAUSTED) + r": (.*? files)")


def _exhausted(source, spec):
    """One element that fails with a one-line message: what the endless training stream ends in if a whole pass
    over this pipeline's share of the training split yields no image."""
    message = (
        f"{_EXHAUSTED}: --dataset={_show(source.origin or source.name)}: no training image could be decoded in a "
        f"whole pass over its {source.num_train} files"
    )

    def fail(_):
        check = tf.debugging.Assert(tf.constant(False), [tf.constant(message)])
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(
                lambda s: tf.zeros([d if d is not None else 0 for d in s.shape], s.dtype), spec
            )

    return tf.data.Dataset.from_tensors(0).map(fail)


def pipeline_error(error):
    """The one-line message of a training stream that ended because nothing decodes (an exception from
    `model.fit` over `train_dataset`), or None for any other error."""
    match = _EXHAUSTED_RE.search(str(getattr(error, "message", error)))
    return match.group(1).strip() if match else None


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
        (tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(0, tf.int64), tf.constant(0.0))
    ).repeat()
    ds = ds.concatenate(pad).batch(per_replica, drop_remainder=True)
    num_classes = source.num_classes

    def finish(x, y, w):
        return augment.normalize(x), tf.one_hot(y, num_classes, dtype=tf.float32), w

    return ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE).with_options(_options(deterministic=True))


def steps_per_epoch(source, global_batch):
    return max(1, source.num_train // global_batch)


def validation_steps(source, global_batch):
    return max(1, math.ceil(source.num_val / global_batch))
