"""Faults and bad input in the training folder scan (`training/data.py`): links that loop or cross classes, broken
links, names that are not UTF-8, files with an image signature and garbage, empty or single classes, and a training
stream in which nothing decodes. Each ends in a count and a warning or a one-line DatasetError, quickly."""

import io
import logging
import os
import random
import struct
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_cmt.training import data, presets


def _png(value=100, size=(10, 12)):
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


GOOD = _png()


def _jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), 80, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bad_idat_png():
    """A PNG whose signature, IHDR and CRCs of the header are valid but whose pixel data is not: it passes the scan's
    header check and fails TensorFlow's decode."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    start = raw.index(b"IDAT") + 4
    for k in range(start, start + 24):
        raw[k] ^= 0x5A
    return bytes(raw)


def _png_declaring(width, height):
    raw = bytearray(GOOD)
    chunk = bytes(raw[12:16]) + struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[12:29] = chunk
    raw[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(raw)


def _write(path, content=GOOD):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def _classes(root, per_class=3, names=("a", "b")):
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            _write(os.path.join(root, name, f"{i}.png"))


def _scan(root):
    """{(real path, class name)} of what the scan keeps, after asserting that no real file is kept twice."""
    paths, labels, names, _, _ = data._scan_classes(str(root))
    kept = [(os.path.realpath(p), names[lab]) for p, lab in zip(paths, labels)]
    assert len(kept) == len(set(kept)) and len({p for p, _ in kept}) == len(kept)
    return set(kept)


def _refused(root, *needles):
    with pytest.raises(data.DatasetError) as info:
        data.resolve_source(str(root))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _real_images(root, name):
    folder = os.path.join(root, name)
    return {(os.path.realpath(os.path.join(folder, f)), name) for f in os.listdir(folder) if f.endswith(".png")}


# ------------------------------------------------------------------------------------------------------ links


def test_a_link_to_its_own_class_folder_is_followed_once(tmp_path):
    _classes(tmp_path, per_class=30)
    os.symlink(tmp_path / "a", tmp_path / "a" / "self")
    os.makedirs(tmp_path / "a" / "sub")
    os.symlink("..", tmp_path / "a" / "sub" / "back")  # a/sub/back -> a
    os.symlink("0.png", tmp_path / "a" / "same.png")  # the same file again
    assert _scan(tmp_path) == _real_images(tmp_path, "a") | _real_images(tmp_path, "b")
    source = data.resolve_source(str(tmp_path))
    assert source.num_train + source.num_val == 60 and source.skipped_files == 0


def test_a_link_to_the_dataset_folder_is_refused_naming_it(tmp_path):
    _classes(tmp_path, per_class=30)
    os.symlink("..", tmp_path / "a" / "up")
    _refused(tmp_path, f"symbolic link {tmp_path / 'a' / 'up'} points to {tmp_path}")


def test_a_link_above_the_dataset_folder_is_refused(tmp_path):
    root = tmp_path / "data"
    _classes(root)
    os.symlink("../..", root / "a" / "up2")
    _refused(root, f"symbolic link {root / 'a' / 'up2'}")


def test_nested_loops_finish_quickly_in_bounded_memory(tmp_path):
    _classes(tmp_path, per_class=5)
    for name in ("a", "b"):  # loops at every level: exponential if links were followed blindly
        deep = tmp_path / name
        for level in range(6):
            deep = deep / f"d{level}"
            os.makedirs(deep)
            _write(str(deep / "x.png"))
            os.symlink(tmp_path / name, deep / "top")
            os.symlink(deep.parent, deep / "parent")
            os.symlink(deep, deep / "self")
    tracemalloc.start()
    start = time.monotonic()
    kept = _scan(tmp_path)
    elapsed = time.monotonic() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(kept) == 2 * (5 + 6)
    assert elapsed < 5 and peak < 20 * 2**20


@pytest.mark.parametrize("link, target", [("from_b", "../b"), ("b0.png", "../b/0.png"), ("deep", "../b/sub")])
def test_a_link_into_another_class_is_refused_naming_it(tmp_path, link, target):
    _classes(tmp_path)
    os.makedirs(tmp_path / "b" / "sub")
    _write(str(tmp_path / "b" / "sub" / "9.png"))
    os.symlink(target, tmp_path / "a" / link)
    _refused(tmp_path, f"symbolic link {tmp_path / 'a' / link}", "another class folder")


def test_a_link_to_a_folder_above_another_class_outside_the_dataset_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _classes(elsewhere, names=("b_real",))
    root = tmp_path / "data"
    _classes(root, names=("a",))
    os.symlink(elsewhere / "b_real", root / "b")  # class b's folder lives elsewhere
    os.symlink(elsewhere, root / "a" / "more")  # ... and this link would reach it from class a
    _refused(root, f"symbolic link {root / 'a' / 'more'}")


def test_two_class_folders_that_are_one_folder_are_refused(tmp_path):
    _classes(tmp_path)
    os.symlink("a", tmp_path / "c")
    _refused(tmp_path, f"class folders {tmp_path / 'a'} and {tmp_path / 'c'}", "same folder")


def test_a_link_to_a_folder_outside_the_dataset_adds_its_images_to_the_class(tmp_path):
    extra = tmp_path / "extra"
    _classes(extra, names=("more_a",))
    root = tmp_path / "data"
    _classes(root)
    os.symlink(extra / "more_a", root / "a" / "more")
    os.symlink(extra / "more_a", root / "a" / "more_again")  # the same folder twice: counted once
    assert _scan(root) == (
        {(p, "a") for p, _ in _real_images(extra, "more_a")} | _real_images(root, "a") | _real_images(root, "b")
    )


def test_the_same_file_in_two_classes_is_refused(tmp_path):
    _classes(tmp_path)
    os.link(tmp_path / "a" / "0.png", tmp_path / "b" / "hard.png")
    _refused(tmp_path, "same file in two class folders", "hard.png")


def test_a_broken_link_is_skipped_and_counted(tmp_path, caplog):
    _classes(tmp_path)
    os.symlink("missing.png", tmp_path / "a" / "broken.png")
    os.symlink("loop2", tmp_path / "a" / "loop1")
    os.symlink("loop1", tmp_path / "a" / "loop2")
    with caplog.at_level(logging.WARNING):
        source = data.resolve_source(str(tmp_path))
    assert source.skipped_files == 3 and source.num_train + source.num_val == 6
    assert "3 broken link" in caplog.text


def test_a_fifo_is_skipped_not_opened(tmp_path):
    _classes(tmp_path)
    os.mkfifo(tmp_path / "a" / "pipe.jpg")  # opening it would block for ever
    source = data.resolve_source(str(tmp_path))
    assert source.skipped_files == 1 and source.num_train + source.num_val == 6


# ------------------------------------------------------------------------------------------------------ names


def test_file_names_that_are_not_utf8_are_skipped_and_named(tmp_path, caplog):
    _classes(tmp_path)
    root = os.fsencode(str(tmp_path))
    _write(os.path.join(root, b"a", b"caf\xe9.png"))
    _write(os.path.join(root, b"b", b"\xff\xfe", b"inside.png"))  # a sub-folder with such a name
    with caplog.at_level(logging.WARNING):
        source = data.resolve_source(str(tmp_path))
    assert source.skipped_files == 2 and source.num_train + source.num_val == 6
    assert "2 name is not UTF-8" in caplog.text
    assert repr(os.fsdecode(os.path.join(root, b"a", b"caf\xe9.png"))) in caplog.text
    assert all(encoded.numpy() == GOOD for encoded, _ in source.train_fn(None))  # every kept path reads


def test_a_class_folder_name_that_is_not_utf8_is_refused_naming_it(tmp_path):
    _classes(tmp_path)
    _write(os.path.join(os.fsencode(str(tmp_path)), b"\xe9t\xe9", b"0.png"))
    _refused(tmp_path, "class folder name '\\udce9t\\udce9' is not one line of valid UTF-8")


def test_a_dataset_path_that_is_not_utf8_is_refused(tmp_path):
    root = os.path.join(os.fsencode(str(tmp_path)), b"d\xe9")
    _classes(os.fsdecode(root))
    _refused(os.fsdecode(root), "path is not one line of valid UTF-8")


def test_hidden_folders_are_not_classes(tmp_path):
    _classes(tmp_path)
    os.makedirs(tmp_path / ".ipynb_checkpoints")
    assert data.resolve_source(str(tmp_path)).class_names == ["a", "b"]


# ----------------------------------------------------------------------------------------------------- content


@pytest.mark.parametrize("magic", [m for m, _ in data._MAGIC])
def test_files_with_a_signature_and_garbage_fail_in_one_line_quickly(tmp_path, magic):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(40):
            _write(str(tmp_path / name / f"{i}.img"), magic + rng.bytes(int(rng.integers(0, 4000))))
    start = time.monotonic()
    _refused(tmp_path, f"--dataset={tmp_path}: no images found", "80 file(s) skipped as unusable")
    assert time.monotonic() - start < 10


def test_a_few_corrupt_images_among_good_ones_are_skipped_and_counted(tmp_path, caplog):
    _classes(tmp_path, per_class=8)
    _write(str(tmp_path / "a" / "garbage.jpg"), b"\xff\xd8\xff" + b"\x00" * 100)
    _write(str(tmp_path / "a" / "text.png"), b"hello")
    _write(str(tmp_path / "b" / "bomb.png"), _png_declaring(40000, 30000))
    _write(str(tmp_path / "b" / "bad_pixels.png"), _bad_idat_png())  # passes the scan; tf.data drops it
    with caplog.at_level(logging.WARNING):
        source = data.resolve_source(str(tmp_path))
    assert source.skipped_files == 3 and source.num_train + source.num_val == 17
    assert "1 too many pixels" in caplog.text and "1 corrupt header" in caplog.text
    batches = list(data.train_dataset(source, presets.SMALL_DATA_PRESET.replace(image_size=32), 4).take(6))
    assert all(tuple(x.shape) == (4, 32, 32, 3) for x, _ in batches)


def test_the_header_check_accepts_what_it_should(tmp_path):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    path = str(tmp_path / "x")
    for fmt, kwargs in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}), ("BMP", {})]:
        for mode in ("RGB", "L"):
            image.convert(mode).save(path, fmt, **kwargs)
            assert data._is_image_file(path) is None, (fmt, mode, kwargs)
    jpeg = _jpeg()
    sof = jpeg.index(b"\xff\xc0")
    _write(path, jpeg[:sof])  # cut before the frame header
    assert data._is_image_file(path) == "corrupt header"
    raw = bytearray(GOOD)
    raw[20] ^= 1  # IHDR no longer matches its CRC
    _write(path, bytes(raw))
    assert data._is_image_file(path) == "corrupt header"


# ------------------------------------------------------------------------------------------------------ classes


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    _classes(tmp_path)
    os.makedirs(tmp_path / "c" / "sub")
    _write(str(tmp_path / "c" / "notes.jpg"), b"text")
    _refused(tmp_path, f"class folder {tmp_path / 'c'} has no usable image", "1 file(s) skipped")


def test_a_single_class_is_refused_naming_it(tmp_path):
    _classes(tmp_path, per_class=6, names=("only",))
    _refused(tmp_path, f"only one class folder ({tmp_path / 'only'})")


def test_validation_folders_must_match_the_training_classes(tmp_path, caplog):
    _classes(tmp_path / "train", names=("a", "b", "c"))
    _classes(tmp_path / "val", per_class=2, names=("a", "b"))
    with caplog.at_level(logging.WARNING):
        source = data.resolve_source(str(tmp_path))
    assert (source.num_train, source.num_val, source.num_classes) == (9, 4, 3)
    assert "1 class(es) have no validation image" in caplog.text
    _classes(tmp_path / "val", per_class=1, names=("zebra",))
    _refused(tmp_path, f"{tmp_path / 'val' / 'zebra'} has no class folder in {tmp_path / 'train'}")


def test_a_file_in_both_splits_is_refused(tmp_path):
    _classes(tmp_path / "train")
    _classes(tmp_path / "val", per_class=1)
    os.link(tmp_path / "train" / "a" / "2.png", tmp_path / "val" / "a" / "leak.png")
    _refused(tmp_path, f"{tmp_path / 'val' / 'a' / 'leak.png'} is also a training image")


def test_a_link_from_train_into_val_is_refused(tmp_path):
    _classes(tmp_path / "train")
    _classes(tmp_path / "val", per_class=1)
    os.symlink(tmp_path / "val" / "a", tmp_path / "train" / "a" / "val_a")
    _refused(tmp_path, f"symbolic link {tmp_path / 'train' / 'a' / 'val_a'}")


# ----------------------------------------------------------------------------------------------------- pipeline


def _in_thread(fn, timeout):
    """fn()'s result or exception, or a failure if it has not ended after `timeout` seconds."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    return result


def test_the_training_stream_ends_with_one_line_when_nothing_decodes(tmp_path):
    for name in ("a", "b"):
        for i in range(4):
            _write(str(tmp_path / name / f"{i}.png"), _bad_idat_png())
    source = data.resolve_source(str(tmp_path))
    assert source.skipped_files == 0  # every header is fine: only decoding fails
    ds = data.train_dataset(source, presets.SMALL_DATA_PRESET.replace(image_size=32), 2)
    result = _in_thread(lambda: list(ds.take(3)), timeout=60)
    assert isinstance(result.get("error"), tf.errors.InvalidArgumentError), result
    assert data.pipeline_error(result["error"]) == (
        f"--dataset={tmp_path}: no training image could be decoded in a whole pass over its {source.num_train} files"
    )
    assert data.pipeline_error(ValueError("something else")) is None


def test_fit_on_a_stream_where_nothing_decodes_raises_the_message(tmp_path):
    import keras

    for name in ("a", "b"):
        for i in range(3):
            _write(str(tmp_path / name / f"{i}.png"), _bad_idat_png())
    source = data.resolve_source(str(tmp_path))
    ds = data.train_dataset(source, presets.SMALL_DATA_PRESET.replace(image_size=32), 2)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile("sgd", "categorical_crossentropy")
    result = _in_thread(lambda: model.fit(ds, steps_per_epoch=3, epochs=2, verbose=0), timeout=60)
    message = data.pipeline_error(result.get("error"))
    assert message is not None and message.startswith(f"--dataset={tmp_path}: no training image"), result


# ------------------------------------------------------------------------------------------------ random trees


def _random_tree(root, rng):
    """A random dataset under root; returns (expected {(real path, class)} or None when it must be refused)."""
    outside = os.path.join(os.path.dirname(root), os.path.basename(root) + "_outside")
    expected, refused = set(), False
    names = [
        f"c{i}" if rng.random() < 0.8 else f"c {i} é" for i in range(1 if rng.random() < 0.05 else rng.randint(2, 4))
    ]
    counts = {n: 0 for n in names}
    folders = {n: [os.path.join(root, n)] for n in names}
    for name in names:
        os.makedirs(folders[name][0])
        for _ in range(rng.randint(0, 3)):  # nested folders, some empty
            sub = os.path.join(rng.choice(folders[name]), f"s{rng.randint(0, 999)}")
            os.makedirs(sub, exist_ok=True)
            folders[name].append(sub)
        for i in range(rng.randint(0 if rng.random() < 0.1 else 1, 5)):
            path = os.path.join(rng.choice(folders[name]), f"{i}.png")
            kind = rng.random()
            if kind < 0.75:
                _write(path)
                expected.add((os.path.realpath(path), name))
                counts[name] += 1
            elif kind < 0.85:
                _write(path, b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(30)))
            else:
                _write(os.path.join(os.fsencode(path)[:-4] + b"\xff.png"))
    for name in names:
        for _ in range(rng.randint(0, 2)):
            where = rng.choice(folders[name])
            link = os.path.join(where, f"l{rng.randint(0, 9999)}")
            if os.path.lexists(link):
                continue
            kind = rng.choices(["own", "broken", "outside", "other", "up"], [6, 2, 3, 1, 1])[0]
            if kind == "own":  # a folder of its own class (loops included) or one of its files
                os.symlink(rng.choice(folders[name]), link)
            elif kind == "broken":
                os.symlink(os.path.join(where, "missing"), link)
            elif kind == "outside":
                extra = os.path.join(outside, name)
                if not os.path.isdir(extra):
                    _write(os.path.join(extra, "e.png"))
                os.symlink(extra, link)
                if (os.path.realpath(os.path.join(extra, "e.png")), name) not in expected:
                    expected.add((os.path.realpath(os.path.join(extra, "e.png")), name))
                    counts[name] += 1
            elif kind == "other" and len(names) > 1:
                os.symlink(rng.choice(folders[rng.choice([n for n in names if n != name])]), link)
                refused = True
            elif kind == "up":
                os.symlink(os.path.dirname(root) if rng.random() < 0.5 else root, link)
                refused = True
    refused = refused or len(names) < 2 or min(counts.values()) == 0
    return expected, refused


def test_random_trees_count_each_image_once_with_its_label_or_refuse(tmp_path):
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for t in range(150):
        root = str(tmp_path / f"t{t}")
        expected, refused = _random_tree(root, rng)
        start = time.monotonic()
        try:
            source = data.resolve_source(root)
        except data.DatasetError as e:
            assert refused, f"tree {t}: {e}"
            assert "\n" not in str(e)
            outcomes["refused"] += 1
        else:
            assert not refused, f"tree {t} was accepted"
            assert source.num_train + source.num_val == len(expected), t
            assert _scan(root) == expected, t
            outcomes["ok"] += 1
        assert time.monotonic() - start < 3, t
    assert min(outcomes.values()) >= 20, outcomes  # both outcomes are exercised


def test_training_on_a_folder_where_nothing_decodes_ends_in_one_line(tmp_path):
    """The whole command, not only the stream: exit status 2, the scan's one line, no traceback, within a pass."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))
    import helpers

    folder = tmp_path / "data"
    for name in ("a", "b"):
        for i in range(4):
            _write(str(folder / name / f"{i}.png"), _bad_idat_png())
    result = helpers.run_train(
        f"--model_dir={tmp_path / 'run'}",
        f"--dataset={folder}",
        "--image_size=32",
        "--batch_size=4",
        "--steps_per_epoch=2",
        "--epochs=1",
        '--model_overrides={"depths": [1, 1, 1, 1]}',
        timeout=400,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("keras_cmt.training.train: error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert errors == [
        f"keras_cmt.training.train: error: --dataset={folder}: no training image could be decoded in "
        f"a whole pass over its {data.resolve_source(str(folder)).num_train} files"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
