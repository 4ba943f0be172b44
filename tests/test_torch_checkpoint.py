"""The restricted reader for PyTorch checkpoints: reads tensors, never executes pickled code."""

import argparse
import pickle
import zipfile

import numpy as np
import pytest

from keras_cmt.weights import torch_checkpoint
from keras_cmt.weights.torch_checkpoint import CheckpointError, read_torch_checkpoint, select_state_dict


def test_reads_the_official_fixture(micro_checkpoint):
    ckpt = read_torch_checkpoint(micro_checkpoint)
    state = select_state_dict(ckpt)
    assert state["stem_conv1.weight"].shape == (8, 3, 3, 3)
    assert state["relative_pos_a"].shape == (1, 256, 4)
    assert state["head.weight"].dtype == np.float32
    assert "blocks_a.0.mlp.conv1.2.num_batches_tracked" in state


class _Evil:
    """Pickles to a call of os.system: a reader that runs pickled code would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_refuses_to_run_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"model": {"x": _Evil(marker)}}, protocol=2))
    ckpt = read_torch_checkpoint(path)
    assert not marker.exists()
    assert "posix.system" in repr(ckpt["model"]["x"]) or "os.system" in repr(ckpt["model"]["x"])
    with pytest.raises(CheckpointError, match="no tensors"):
        select_state_dict(ckpt, source=str(path))


def test_training_checkpoint_with_namespace_and_ema(tmp_path):
    ckpt = {
        "model": {"w": np.zeros(2, dtype="float32")},
        "model_ema": {"w": np.ones(2, dtype="float32")},
        "args": argparse.Namespace(lr=1e-3),
        "epoch": 299,
    }
    assert select_state_dict(ckpt)["w"][0] == 1.0  # the official evaluation loads EMA
    assert select_state_dict(ckpt, prefer="model")["w"][0] == 0.0
    ckpt["model_ema"] = None
    assert select_state_dict(ckpt)["w"][0] == 0.0
    with pytest.raises(CheckpointError, match="no model_ema"):
        select_state_dict(ckpt, prefer="ema")


def test_namespace_in_a_real_zip_is_stubbed(tmp_path):
    path = tmp_path / "train.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("t/data.pkl", pickle.dumps({"args": argparse.Namespace(model="cmt_s"), "epoch": 3}, protocol=2))
    ckpt = read_torch_checkpoint(path)
    assert ckpt["epoch"] == 3
    assert isinstance(ckpt["args"], torch_checkpoint.InertObject)
    assert ckpt["args"].state == {"model": "cmt_s"}


def test_truncated_checkpoint(tmp_path, micro_checkpoint):
    path = tmp_path / "truncated.pth"
    path.write_bytes(micro_checkpoint.read_bytes()[:300_000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        read_torch_checkpoint(path)


def test_html_page_saved_as_checkpoint(tmp_path):
    path = tmp_path / "cmt_small.pth"
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(CheckpointError, match="cmt_small.pth: not a PyTorch checkpoint.*HTML"):
        read_torch_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_torch_checkpoint(tmp_path / "absent.pth")


# --- hostile records and archives (each check's refusal; tests/test_hostile_files.py runs the crashing ones in a
# subprocess and fuzzes the rest) ----------------------------------------------------------------------------------


def _hostile():
    import os
    import sys

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hostile")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import records

    return records


def _floats(n=16, key="0"):
    return _hostile().Storage(key, np.arange(n, dtype="<f4").tobytes())


def _write(tmp_path, obj, name="hostile.pth", **kwargs):
    path = tmp_path / name
    path.write_bytes(_hostile().checkpoint_bytes(obj, **kwargs))
    return path


def _refused(path, pattern, **kwargs):
    with pytest.raises(CheckpointError, match=pattern) as error:
        read_torch_checkpoint(path, **kwargs)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "offset, size, stride, pattern",
    [
        (0, (4,), (-1,), r"stride entry is -1, not a non-negative 64-bit integer"),
        (0, (-4,), (1,), r"size entry is -4, not a non-negative 64-bit integer"),
        (-1, (), (), r"storage offset of a tensor on storage 0 is -1"),
        (17, (0,), (1,), r"storage offset 17 lies outside storage 0 \(16 elements\)"),
        (15, (2,), (1,), r"addresses element 16 of storage 0, which has 16: it runs past its storage"),
        (0, (4, 4), (5, 1), r"addresses element 18 of storage 0"),
        (0, (1, 4), (1 << 63, 1), r"stride entry is 9223372036854775808"),
        (0, (2, 3), (1,), r"has size \(2, 3\) but stride \(1,\)"),
        (0, (1,) * 33, (1,) * 33, r"33 dimensions \(at most 32\)"),
        (0, (2.0,), (1,), r"size entry is 2.0"),
        (0, "4", (1,), r"size is '4', not a tuple of integers"),
        (True, (4,), (1,), r"storage offset of a tensor on storage 0 is True"),
    ],
)
def test_a_tensor_record_is_checked_against_its_storage(tmp_path, offset, size, stride, pattern):
    records = _hostile()
    path = _write(tmp_path, {"model": {"w": records.Record(_floats(), offset, size, stride)}})
    _refused(path, pattern)


def test_records_within_their_storage_load_exactly(tmp_path):
    """Views, shared storages, stride 0, size-1 dimensions with any stride, empty tensors at the storage's end."""
    records = _hostile()
    s = _floats()
    path = _write(
        tmp_path,
        {
            "model": {
                "t": records.Record(s, 1, (3, 2), (1, 3)),
                "b": records.Record(s, 4, (2, 3), (0, 1)),
                "one": records.Record(s, 15, (1, 1), (1 << 62, 7)),
                "end": records.Record(s, 16, (0, 5), (5, 1)),
                "x": records.Record(s, 7, (), ()),
            }
        },
    )
    state = read_torch_checkpoint(path)["model"]
    base = np.arange(16, dtype="float32")
    np.testing.assert_array_equal(state["t"], base[[[1, 4], [2, 5], [3, 6]]])
    np.testing.assert_array_equal(state["b"], np.stack([base[4:7]] * 2))
    np.testing.assert_array_equal(state["one"], [[15.0]])
    assert state["end"].shape == (0, 5) and state["x"].shape == () and state["x"] == 7.0
    assert all(v.flags.c_contiguous and v.flags.owndata for v in state.values())


def test_a_stride_0_bomb_is_refused_before_allocating(tmp_path):
    records = _hostile()
    path = _write(tmp_path, {"model": {"w": records.Record(_floats(), 0, (1 << 31,), (0,))}})  # 8 GiB of floats
    _refused(path, r"size \(2147483648,\) needs more memory than a CMT checkpoint may take \(4 GiB in all\)")
    _refused(path, r"\(1 MiB in all\)", max_bytes=1 << 20)


@pytest.mark.parametrize(
    "numel, pattern",
    [
        (
            17,
            r"storage 0 is cut short: it declares 17 FloatStorage elements, 68 bytes, and holds 64; a tensor on it "
            r"runs past its storage",
        ),
        (
            15,
            r"storage 0's zip entry declares 64 bytes, more than its 15 FloatStorage elements take \(60\); refused "
            r"before reading it",
        ),
        (-1, r"storage 0's element count is -1"),
        (16.0, r"storage 0's element count is 16.0"),
    ],
)
def test_a_storage_holds_exactly_its_declared_elements(tmp_path, numel, pattern):
    records = _hostile()
    storage = records.Storage("0", np.arange(16, dtype="<f4").tobytes(), numel=numel)
    _refused(_write(tmp_path, {"model": {"w": records.Record(storage, 0, (1,), (1,))}}), pattern)


@pytest.mark.parametrize(
    "form, pattern",
    [
        ("untyped", r"unsupported storage type torch.UntypedStorage"),
        ("module", r"unsupported storage type os.system"),
        ("short", r"unsupported persistent id in checkpoint \(a tuple of 4;"),
        ("tag", r"unsupported persistent id"),
        ("text", r"unsupported persistent id in checkpoint \('storage'; "),
        ("key", r"a storage key is 0, not a short string"),
        ("absent", r"storage 7 is missing from the archive"),
    ],
)
def test_only_the_persistent_ids_of_a_checkpoint_are_accepted(tmp_path, form, pattern):
    records = _hostile()
    g = records.torch_zip._Global
    float_type = g("torch", "FloatStorage")
    pid = {
        "untyped": ("storage", g("torch", "UntypedStorage"), "0", "cpu", 16),
        "module": ("storage", g("os", "system"), "0", "cpu", 16),
        "short": ("storage", float_type, "0", "cpu"),
        "tag": ("module", float_type, "0", "cpu", 16),
        "text": "storage",
        "key": ("storage", float_type, 0, "cpu", 16),
        "absent": ("storage", float_type, "7", "cpu", 16),
    }[form]
    storage = records.Storage("0", np.arange(16, dtype="<f4").tobytes(), pid=pid)
    _refused(
        _write(
            tmp_path, {"model": {"w": records.Record(storage, 0, (1,), (1,))}}, entries={"archive/data/0": bytes(64)}
        ),
        pattern,
    )


def test_zip_entries_are_sized_from_the_directory_before_anything_is_read(tmp_path, monkeypatch):
    records = _hostile()
    good = records.checkpoint_bytes({"model": {"w": records.Record(_floats(), 0, (16,), (1,))}})
    read = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile,
        "read",
        lambda self, name, pwd=None: read.append(getattr(name, "filename", name)) or original(self, name, pwd),
    )
    cases = [
        (
            "archive/data/0",
            8 << 30,
            r"its storages declare 8589934592 bytes in all, more than a CMT checkpoint "
            r"takes \(at most 4 GiB\); refused before reading them",
        ),
        (
            "archive/data/0",
            68,
            r"storage 0's zip entry declares 68 bytes, more than its 16 FloatStorage "
            r"elements take \(64\); refused before reading it",
        ),
        (
            "archive/data.pkl",
            8 << 30,
            r"its data.pkl declares 8589934592 bytes, more than a checkpoint's pickle "
            r"takes \(at most 32 MiB\)",
        ),
    ]
    for i, (entry, size, pattern) in enumerate(cases):
        path = tmp_path / f"bomb{i}.pth"
        path.write_bytes(records.set_declared_size(good, entry, size))
        read.clear()
        _refused(path, pattern)
        assert entry not in read
    # A deflated entry that inflates far beyond its record is never inflated past what the record needs.
    path = tmp_path / "inflates.pth"
    path.write_bytes(records.deflate_bomb_entry(good, "archive/data/0", 64 << 20))
    _refused(path, r"storage 0's zip entry declares 67108864 bytes, more than its 16 FloatStorage elements take")


def test_duplicated_or_ambiguous_entries_are_refused(tmp_path):
    records = _hostile()
    record = records.Record(_floats(), 0, (16,), (1,))
    _refused(
        _write(tmp_path, {"model": {"w": record}}, entries={"other/data.pkl": b"\x80\x02N."}),
        r"zip file with 2 data.pkl entries",
    )
    good = records.checkpoint_bytes({"model": {"w": record}})
    with zipfile.ZipFile(__import__("io").BytesIO(good)) as z:
        items = [(n, z.read(n)) for n in z.namelist()]
    path = tmp_path / "twice.pth"
    path.write_bytes(records.zip_bytes(items + [("archive/data/0", bytes(64))]))
    _refused(path, r"the zip holds entry 'archive/data/0' twice")


def test_a_big_endian_checkpoint_loads(tmp_path):
    records = _hostile()
    storage = records.Storage("0", np.arange(4, dtype=">f4").tobytes())
    path = _write(
        tmp_path, {"model": {"w": records.Record(storage, 0, (4,), (1,))}}, entries={"archive/byteorder": b"big"}
    )
    value = read_torch_checkpoint(path)["model"]["w"]
    assert value.dtype == np.dtype("float32") and value.dtype.isnative
    np.testing.assert_array_equal(value, [0, 1, 2, 3])


@pytest.mark.parametrize(
    "payload, pattern",
    [
        (b"\x80\x02N" + b"r" + (0x7FFFFFF0).to_bytes(4, "little") + b".", r"holds None, not a state dict"),
        (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"x.", r"unreadable PyTorch checkpoint \(EOFError"),
        (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", r"holds a list, not a state dict"),
        (
            b"\x80\x02ccollections\nOrderedDict\n)R}X\x05\x00\x00\x00itemscos\nsystem\nsb.",
            r"the pickle sets an unexpected state on an OrderedDict",
        ),
    ],
    ids=["memo-index-2**31", "binbytes8-2**40", "deep-lists", "shadow-ordereddict-items"],
)
def test_the_pickle_can_neither_allocate_what_it_declares_nor_reach_into_the_reader(tmp_path, payload, pattern):
    """The C unpickler allocates a memo of the highest index a BINPUT names, and a buffer of the length a
    BINBYTES8 declares, before reading a byte; the reader uses the pure-Python one, whose reads are bounded."""
    records = _hostile()
    path = tmp_path / "pickle.pth"
    path.write_bytes(records.zip_bytes([("archive/data.pkl", payload)]))
    with pytest.raises(CheckpointError, match=pattern):
        select_state_dict(read_torch_checkpoint(path), source=str(path))
