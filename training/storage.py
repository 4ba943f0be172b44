"""Run folders and files wherever `tf.io.gfile` reaches: local paths, `file://` URLs, `gs://`, `s3://` (with its
plugin), TensorFlow's in-memory `ram://`.

Large runs keep their run folders and data in object storage; Keras' own savers already write there, `os` and
`open` do not. Everything the training and evaluation commands read or write goes through these few functions.
A `file://` URL becomes its local path (so that local runs keep atomic renames and hard links). Writes stay whole
or absent: a local file is written under a temporary name and renamed; an object store makes an object visible
only when its upload completes, and the remote path here is written the same way (temporary name, then rename).
"""

import contextlib
import errno
import json
import os
import tempfile

import tensorflow as tf

from keras_cmt import atomic_files


class StorageError(OSError):
    """A path the command cannot use (no such bucket, no credentials, unknown scheme); one line naming it."""


class NoSpaceError(StorageError):
    """The folder's disk or quota is full at start-up."""


class WriteError(OSError):
    """A write that failed (a full disk, a quota, a read-only or vanished folder); `path` and a one-line `reason`."""

    def __init__(self, path, reason, no_space=False):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason, self.no_space = path, reason, no_space


def is_no_space(error):
    """Whether `error` says the disk or quota is full (errno, TensorFlow's error class, or h5py's message text)."""
    if isinstance(error, WriteError):
        return error.no_space
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return True
    text = str(error)
    return "No space left" in text or "errno = 28" in text or "Disk quota exceeded" in text


def as_write_error(path, error):
    """`error` (an OSError, TensorFlow's OpError, or h5py's RuntimeError from a failed write) as a WriteError."""
    if isinstance(error, WriteError):
        return error
    if is_no_space(error):
        return WriteError(path, "no space left on device", no_space=True)
    reason = getattr(error, "strerror", None) if isinstance(error, OSError) else None
    return WriteError(path, reason or _first_line(error))


def _is_write_failure(error):
    """OSError and TensorFlow's OpError are I/O; h5py reports some failed writes and flushes as RuntimeError."""
    if isinstance(error, (OSError, tf.errors.OpError)):
        return True
    return isinstance(error, RuntimeError) and any(
        word in str(error) for word in ("write failed", "flush", "errno", "No space left")
    )


def normalize(path):
    """`file:///x` -> `/x`; other paths unchanged (None stays None)."""
    if path is None:
        return None
    path = os.fspath(path)
    if path.startswith("file://"):
        return path[len("file://") :] or "/"
    return path


def is_remote(path):
    return "://" in normalize(path)


def join(path, *names):
    return "/".join([normalize(path).rstrip("/")] + list(names)) if is_remote(path) else os.path.join(path, *names)


def exists(path):
    return tf.io.gfile.exists(normalize(path))


def isdir(path):
    return tf.io.gfile.isdir(normalize(path))


def listdir(path):
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(normalize(path)))


def makedirs(path):
    tf.io.gfile.makedirs(normalize(path))


def remove(path):
    path = normalize(path)
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def walk(path):
    return tf.io.gfile.walk(normalize(path))


def read_text(path):
    with tf.io.gfile.GFile(normalize(path), "r") as f:
        return f.read()


def read_json(path):
    return json.loads(read_text(path))


@contextlib.contextmanager
def local_copy(path):
    """A local path holding `path`'s bytes (a temporary copy for a remote file; `path` itself for a local one),
    for readers that need a real file, such as keras_cmt's checkpoint validation."""
    path = normalize(path)
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, path.rsplit("/", 1)[-1])
        tf.io.gfile.copy(path, local, overwrite=True)
        yield local


def write_atomically(path, write):
    """Calls `write(local_tmp_path)` for a local temporary file whose name ends like `path` (as Keras' savers want),
    then puts it at `path` in one rename (locally) or one upload-then-rename (elsewhere). A failed write leaves
    `path` as it was, removes its temporary file and raises WriteError."""
    path = normalize(path)
    with _write_errors(path):
        if not is_remote(path):
            return atomic_files.write_atomically(path, write)
        return _write_remote(path, write)


@contextlib.contextmanager
def _write_errors(path):
    """Write failures inside become WriteError naming `path`; other errors pass unchanged."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only write failures are turned into WriteError
        if _is_write_failure(e):
            raise as_write_error(path, e) from None
        raise


def _write_remote(path, write):
    folder, name = path.rsplit("/", 1)
    makedirs(folder)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        write(local)
        remote_tmp = f"{folder}/.tmp-{os.getpid()}.{name}"
        tf.io.gfile.copy(local, remote_tmp, overwrite=True)
        try:
            tf.io.gfile.rename(remote_tmp, path, overwrite=True)
        finally:
            if tf.io.gfile.exists(remote_tmp):
                tf.io.gfile.remove(remote_tmp)
    return path


def write_bytes(path, data):
    """`atomic_files.write_bytes` (fsynced) for a local path; for a remote one, an upload-then-rename."""
    path = normalize(path)
    if not is_remote(path):
        with _write_errors(path):
            return atomic_files.write_bytes(path, data)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return write_atomically(path, write)


def write_text(path, text):
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    return write_bytes(path, atomic_files.json_bytes(obj))


def publish_copy(source, path):
    """`path` becomes a copy of the finished file `source`: a hard link on a local file system, else a copy."""
    source, path = normalize(source), normalize(path)
    if not is_remote(source) and not is_remote(path):
        with _write_errors(path):
            return atomic_files.publish_copy(source, path)
    return write_atomically(path, lambda tmp: tf.io.gfile.copy(source, tmp, overwrite=True))


def check_reachable(path, flag):
    """Asks the file system whether `path` exists, so that an unknown scheme, a bucket that does not exist or
    missing credentials fail with one line before any work."""
    path = normalize(path)
    try:
        tf.io.gfile.exists(path)
    except (tf.errors.OpError, OSError) as e:
        raise StorageError(f"{flag}={path}: cannot use it: {_first_line(e)}") from None


def check_writable(path, flag):
    """Creates the folder and writes/deletes a probe file there, so that a bad URL (no bucket, no credentials,
    unknown scheme) fails at start-up with one line, before any training step."""
    path = normalize(path)
    try:
        makedirs(path)
        probe = join(path, f".tmp-probe-{os.getpid()}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("probe")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        if is_no_space(e):
            raise NoSpaceError(f"{flag}={path}: no space left on device") from None
        raise StorageError(f"{flag}={path}: cannot use it: {_first_line(e)}") from None


def check_readable(path, flag):
    path = normalize(path)
    try:
        if not tf.io.gfile.exists(path):
            raise StorageError(f"{flag}={path}: no such file")
    except tf.errors.OpError as e:
        raise StorageError(f"{flag}={path}: cannot read there: {_first_line(e)}") from None


def first_line(error):
    """The first line of an error's message (its class name when it has none)."""
    return _first_line(error)


def _first_line(error):
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.strip().splitlines()[0]
