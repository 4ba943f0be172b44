"""The restricted reader for PyTorch checkpoints: reads tensors, never executes pickled code."""

import argparse
import pickle
import zipfile

import numpy as np
import pytest

from keras_cmt.weights import torch_checkpoint
from keras_cmt.weights.torch_checkpoint import CheckpointError, read_torch_checkpoint, select_state_dict

pytestmark = pytest.mark.all_backends


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
