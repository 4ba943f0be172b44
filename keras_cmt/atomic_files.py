"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed over it
(atomic on POSIX), so a reader or a killed process never leaves half a weights file, model or record behind."""

import json
import os
import tempfile


def write_atomically(path, write):
    """Calls `write(tmp_path)` for a temporary file in `path`'s folder whose name ends like `path` (so writers that
    check the extension, such as Keras' `save_weights`, accept it), then renames it over `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="." + name, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(path, write)


def write_text(path, text):
    return write_bytes(path, text.encode("utf-8"))


def json_bytes(obj):
    """The bytes every JSON record of keras_cmt is written as (sorted keys, indented, final newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_json(path, obj):
    return write_bytes(path, json_bytes(obj))


def publish_copy(source, path):
    """Makes `path` a copy of the finished file `source`, atomically: a hard link where the file system allows
    (no second write of the same bytes), else a copy."""
    import shutil

    def link(tmp):
        os.remove(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    return write_atomically(path, link)
