"""keras.config.set_image_data_format("channels_first") on JAX and PyTorch: the same weights and logits as
channels_last (PyTorch's own layout, with no transpose around each convolution on the torch backend)."""

import keras
import numpy as np
import pytest

import keras_cmt
from conftest import build_micro, numpy, trainable_gradients

pytestmark = pytest.mark.channels_first


def test_official_logits_in_nchw(channels_first_format, micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    assert model.input_shape == (None, 3, 64, 64)
    assert model.get_layer("blocks_a_0").data_format == "channels_first"
    assert np.abs(numpy(model(micro_io["input_nchw"])) - micro_io["logits"]).max() <= 1e-4
    assert np.abs(model.predict(micro_io["input_nchw"], verbose=0) - micro_io["logits"]).max() <= 1e-4


def test_cmt_tiny_logits_in_nchw(channels_first_format, ti_fixture):
    checkpoint, io = ti_fixture
    model = keras_cmt.CMTTiny(weights=checkpoint, classifier_activation=None)
    assert np.abs(numpy(model(io["input_nchw"])) - io["logits"]).max() <= 1e-4


def test_weights_files_are_the_same_in_both_layouts(tmp_path, micro_checkpoint, micro_io):
    """A .weights.h5 saved channels_last loads channels_first (and back) with the same outputs."""
    last = build_micro(weights=str(micro_checkpoint))
    path = str(tmp_path / "last.weights.h5")
    last.save_weights(path)
    keras.config.set_image_data_format("channels_first")
    try:
        first = build_micro(weights=path, input_shape=(3, 96, 64))  # another size too: biases resized
        first_same = build_micro(weights=path)
        back = str(tmp_path / "first.weights.h5")
        first_same.save_weights(back)
    finally:
        keras.config.set_image_data_format("channels_last")
    np.testing.assert_allclose(
        numpy(first_same(micro_io["input_nchw"])), numpy(last(micro_io["input_nhwc"])), atol=1e-5
    )
    assert np.isfinite(numpy(first(np.zeros((1, 3, 96, 64), "float32")))).all()
    again = build_micro(weights=back)
    np.testing.assert_allclose(numpy(again(micro_io["input_nhwc"])), numpy(last(micro_io["input_nhwc"])), atol=1e-6)


def test_training_in_nchw(channels_first_format):
    # Drop path draws which samples lose a branch: unseeded, it dropped a last-stage branch for both samples of
    # this batch in one CI run in a hundred or so, and that branch's weights then rightly had no gradient.
    keras.utils.set_random_seed(0)
    model = build_micro(drop_path_rate=0.1)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype("float32")
    grads = trainable_gradients(model, x)
    assert not [v.path for v, g in zip(model.trainable_weights, grads) if g is None or not np.any(g)]
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    assert np.isfinite(model.fit(x, np.array([1, 2]), verbose=0).history["loss"][0])


def test_pyramid_in_nchw(channels_first_format, micro_checkpoint):
    pyramid = keras_cmt.pyramid_model(
        build_micro(include_top=False, weights=str(micro_checkpoint), input_shape=(3, 64, 96))
    )
    shapes = {k: tuple(v.shape) for k, v in pyramid.output.items()}
    assert shapes == {
        "P2": (None, 16, 16, 24),
        "P3": (None, 32, 8, 12),
        "P4": (None, 64, 4, 6),
        "P5": (None, 128, 2, 3),
    }


def test_fuse_for_inference_says_it_serves_channels_last(channels_first_format, micro_checkpoint):
    with pytest.raises(ValueError, match="channels_last serving form"):
        keras_cmt.fuse_for_inference(build_micro(weights=str(micro_checkpoint)))
