"""Shared test set-up: quiet TensorFlow, the fixture paths, a small CMT configuration and the backend markers.

The suite runs once per Keras backend (`tests/run.py`): everything on TensorFlow, and the tests marked
`all_backends` (the model, its weights and inference) again on JAX and on PyTorch, each in its own process.
Tests marked `channels_first` run where Keras can convolve channels-first on a CPU (JAX and PyTorch).
"""

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


def pytest_configure(config):
    config.addinivalue_line("markers", "all_backends: runs on TensorFlow, JAX and PyTorch (tests/run.py)")
    config.addinivalue_line("markers", "channels_first: needs channels-first convolutions on the CPU (JAX, PyTorch)")


def channels_last():
    import keras

    return keras.config.image_data_format() == "channels_last"


def image_shape(height, width):
    """(height, width, 3) or (3, height, width), as the current image data format wants."""
    return (height, width, 3) if channels_last() else (3, height, width)


def to_model_layout(nhwc):
    """An NHWC batch in the layout of the current image data format."""
    return nhwc if channels_last() else np.ascontiguousarray(np.transpose(nhwc, (0, 3, 1, 2)))


def numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.fixture
def channels_first_format():
    """Switches Keras to channels_first for one test."""
    import keras

    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format(previous)


@pytest.fixture(scope="session")
def micro_io():
    return dict(np.load(FIXTURES / "cmt_micro_seed0_io.npz"))


@pytest.fixture(scope="session")
def micro_checkpoint():
    return FIXTURES / "cmt_micro_seed0.pth"


@pytest.fixture(scope="session")
def ti_fixture():
    """(path of the official CMT-Ti checkpoint, its inputs and logits) from ../shared/fixtures."""
    checkpoint = SHARED_FIXTURES / "cmt_ti_seed0.pth"
    if not checkpoint.exists():
        if os.environ.get("CI"):  # CI provides ../shared: there, a missing fixture is a failure, not a skip
            pytest.fail(f"{checkpoint} is not beside this checkout; CI must provide ../shared")
        pytest.skip(f"{checkpoint} is not beside this checkout (CI provides ../shared)")
    return str(checkpoint), dict(np.load(SHARED_FIXTURES / "cmt_ti_seed0_io.npz"))


def build_micro(**kwargs):
    import keras_cmt

    options = dict(MICRO_CONFIG, input_shape=image_shape(64, 64), classes=10)
    options.update(kwargs)
    return keras_cmt.CMT(**options)


def trainable_gradients(model, x):
    """The gradients of sum(model(x, training=True) ** 2) for each trainable weight, as numpy arrays, with the
    current backend's own differentiation (test code: the model itself has no backend branch)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) ** 2)
        return [numpy(g) if g is not None else None for g in tape.gradient(loss, model.trainable_weights)]
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(values):
            out, _ = model.stateless_call(values, non_trainable, x, training=True)
            return (out**2).sum()

        return [numpy(g) for g in jax.jit(jax.grad(loss))(trainable)]
    if backend == "torch":
        import torch

        loss = (model(torch.as_tensor(x), training=True) ** 2).sum()
        grads = torch.autograd.grad(loss, [v.value for v in model.trainable_variables], allow_unused=True)
        return [g.detach().cpu().numpy() if g is not None else None for g in grads]
    raise NotImplementedError(backend)
