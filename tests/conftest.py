"""Shared test set-up: quiet TensorFlow, the fixture paths and a small CMT configuration."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REPO = pathlib.Path(__file__).resolve().parents[1]
# The shared fixtures live beside the checkout (../shared) in CI and on developer machines.
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

# The configuration of the official micro fixture (tests/fixtures/cmt_micro_seed0.json).
MICRO_CONFIG = dict(
    depths=[1, 1, 2, 1],
    embed_dims=[16, 32, 64, 128],
    num_heads=[1, 2, 4, 8],
    mlp_ratios=[2, 2, 2, 2],
    stem_channels=8,
    head_channels=64,
)


@pytest.fixture(scope="session")
def micro_io():
    return dict(np.load(FIXTURES / "cmt_micro_seed0_io.npz"))


@pytest.fixture(scope="session")
def micro_checkpoint():
    return FIXTURES / "cmt_micro_seed0.pth"


def build_micro(**kwargs):
    import keras_cmt

    options = dict(MICRO_CONFIG, input_shape=(64, 64, 3), classes=10)
    options.update(kwargs)
    return keras_cmt.CMT(**options)
