"""fuse_for_inference: the folded serving model computes the same function as the training model."""

import keras
import numpy as np
import pytest

import keras_cmt
from conftest import MICRO_CONFIG, SHARED_FIXTURES, build_micro
from keras_cmt.inference import fuse_for_inference


def test_fused_micro_matches_the_official_logits(micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    fused = fuse_for_inference(model)
    assert np.abs(fused.predict(micro_io["input_nhwc"], verbose=0) - micro_io["logits"]).max() <= 1e-4
    assert not fused.trainable_weights
    # Fewer weights: every BatchNorm is gone (its statistics included).
    assert fused.count_params() < model.count_params()
    assert not [layer for layer in fused._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def test_fused_cmt_tiny_matches_the_official_logits():
    checkpoint = SHARED_FIXTURES / "cmt_ti_seed0.pth"
    if not checkpoint.exists():
        pytest.skip(f"{checkpoint} is not beside this checkout (CI provides ../shared)")
    io = np.load(SHARED_FIXTURES / "cmt_ti_seed0_io.npz")
    fused = fuse_for_inference(keras_cmt.CMTTiny(weights=str(checkpoint), classifier_activation=None))
    assert np.abs(fused.predict(io["input_nhwc"], verbose=0) - io["logits"]).max() <= 1e-4
    keras.backend.clear_session()


@pytest.mark.parametrize("kwargs", [
    dict(include_top=False, pooling=None),
    dict(include_top=False, pooling="max"),
    dict(input_shape=(96, 64, 3)),
    dict(classifier_activation="softmax"),
])
def test_fused_matches_for_other_heads_and_sizes(kwargs, micro_checkpoint):
    model = build_micro(weights=str(micro_checkpoint), **kwargs)
    fused = fuse_for_inference(model)
    x = np.random.default_rng(0).normal(size=(2,) + model.input_shape[1:]).astype("float32")
    np.testing.assert_allclose(fused.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)
    assert fused.output_shape == model.output_shape


def test_zero_batchnorm_scale_is_still_exact(micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    for name in ("stem_norm1", "blocks_b_0"):
        layer = model.get_layer(name)
        bn = layer if name.startswith("stem") else layer.mlp.norm1
        gamma = bn.gamma.numpy()
        gamma[:2] = 0.0  # channels whose BatchNorm output is a constant
        bn.gamma.assign(gamma)
    fused = fuse_for_inference(model)
    np.testing.assert_allclose(fused.predict(micro_io["input_nhwc"], verbose=0),
                               model.predict(micro_io["input_nhwc"], verbose=0), atol=1e-4)


def test_fused_model_saves_as_keras_file(tmp_path, micro_checkpoint, micro_io):
    fused = fuse_for_inference(build_micro(weights=str(micro_checkpoint)))
    path = tmp_path / "fused.keras"
    fused.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict(micro_io["input_nhwc"], verbose=0),
                                  fused.predict(micro_io["input_nhwc"], verbose=0))


def test_refuses_other_models():
    inputs = keras.Input((32, 32, 3))
    with pytest.raises(ValueError, match="built by keras_cmt.CMT"):
        fuse_for_inference(keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)))


def test_refuses_an_already_fused_model(micro_checkpoint):
    fused = fuse_for_inference(build_micro(weights=str(micro_checkpoint)))
    with pytest.raises(ValueError, match="not yet fused"):
        fuse_for_inference(fused)


def test_onednn_fuses_each_ffn_expansion_with_its_gelu(micro_checkpoint):
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    from benchmarks.op_profile import trace_kernels

    if not _pywrap_util_port.IsMklEnabled():
        pytest.skip("this TensorFlow runs without oneDNN (TF_ENABLE_ONEDNN_OPTS=0): nothing to fuse")
    # The official checkpoint's biases are non-zero: with zero biases Grappler deletes the BiasAdd and with it the
    # MatMul+BiasAdd+GELU pattern, which is why the benchmarks randomise them too.
    fused = fuse_for_inference(build_micro(weights=str(micro_checkpoint)))
    _, counts, _ = trace_kernels(lambda x: fused(x, training=False), tf.TensorSpec((1, 64, 64, 3)))
    blocks = sum(MICRO_CONFIG["depths"])
    assert counts["_MklNativeFusedMatMul"] >= blocks  # at least fc1 of every block
    # GELUs left as separate kernels: the stem's three and the one after each block's depthwise convolution.
    assert counts["Erfc"] == 3 + blocks
