"""Multi-scale features: the P2..P5 dict model (keras-hub's pyramid_outputs convention), non-square inputs, shared
weights, pretrained weights at another resolution, serialisation."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

from conftest import numpy  # noqa: E402

import keras_cmt  # noqa: E402
from keras_cmt.layers import checkpoint_layout  # noqa: E402
from keras_cmt.weights import position_bias_resize, pretrained  # noqa: E402

pytestmark = pytest.mark.all_backends


@pytest.fixture(scope="module")
def micro_base():
    model = helpers.micro_model(input_shape=(96, 160, 3), include_top=False)
    keras_cmt.weights.loading.assign_state_dict(model, helpers.micro_state_dict())
    return model


def test_non_square_pyramid_shapes_and_values(micro_base):
    pyramid = keras_cmt.pyramid_model(micro_base)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 160, 3)).astype("float32")
    features = pyramid(x, training=False)
    assert isinstance(features, dict) and sorted(features) == ["P2", "P3", "P4", "P5"]
    shapes = {k: tuple(v.shape) for k, v in features.items()}
    assert shapes == {"P2": (2, 24, 40, 16), "P3": (2, 12, 20, 32), "P4": (2, 6, 10, 64), "P5": (2, 3, 5, 128)}
    assert set(pyramid.pyramid_outputs) == set(shapes)
    # P5 is what the base model's head continues from: head_conv -> head_norm -> swish gives its output.
    head = features["P5"]
    for name in ("head_conv", "head_norm", "head_swish"):
        head = micro_base.get_layer(name)(head, training=False)
    np.testing.assert_allclose(numpy(head), numpy(micro_base(x, training=False)), atol=1e-5)
    # The pyramid shares the base model's weights (no copy): same variables.
    assert {id(v) for v in pyramid.weights} <= {id(v) for v in micro_base.weights}


def test_level_selection_and_errors(micro_base):
    pyramid = keras_cmt.pyramid_model(micro_base, min_level=3, max_level=4)
    assert sorted(pyramid.output) == ["P3", "P4"]
    with pytest.raises(ValueError, match="2 <= min_level <= max_level <= 5"):
        keras_cmt.pyramid_model(micro_base, min_level=1)
    not_cmt = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, name="conv")], name="plain")
    with pytest.raises(ValueError, match="plain is not a keras_cmt CMT model: it has no layer 'stage_1'"):
        keras_cmt.pyramid_model(not_cmt)


def test_keras_round_trip(micro_base, tmp_path):
    pyramid = keras_cmt.pyramid_model(micro_base)
    path = str(tmp_path / "pyramid.keras")
    pyramid.save(path)
    restored = keras.saving.load_model(path)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 96, 160, 3)).astype("float32")
    ours, theirs = pyramid(x), restored(x)
    for level in ("P2", "P3", "P4", "P5"):
        np.testing.assert_allclose(numpy(theirs[level]), numpy(ours[level]), atol=1e-6)


def test_cmt_pyramid_with_imagenet_weights_at_a_non_square_size(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv(pretrained.PREFER_ENV, raising=False)
    monkeypatch.delenv(pretrained.SHA256_ENV_PREFIX + "CMT_TI", raising=False)
    # A CMT-Ti release checkpoint (random weights, the real shapes) on the local release server.
    source = keras_cmt.CMTTiny()
    state = helpers.state_dict_of(source)
    with helpers.release_server() as server:
        monkeypatch.setenv(pretrained.BASE_URL_ENV, server.base_url)
        helpers.serve_checkpoint(server, "cmt_tiny.pth", helpers.release_checkpoint(state, None))
        pyramid = keras_cmt.CMTPyramid("cmt_ti", weights="imagenet", input_shape=(64, 96, 3))
    assert server.requests == ["/release-v1/cmt_tiny.pth"]
    assert [tuple(pyramid.output[k].shape) for k in ("P2", "P3", "P4", "P5")] == [
        (None, 16, 24, 46),
        (None, 8, 12, 92),
        (None, 4, 6, 184),
        (None, 2, 3, 368),
    ]
    base_layers = {layer.name: layer for layer in pyramid.layers}
    assert "head" not in base_layers
    # The checkpoint's tensors are in the pyramid; the biases resized from 160x160 to 64x96.
    dense = checkpoint_layout.conv
    checks = {
        "stem_conv1.weight": (pyramid.get_layer("stem_conv1").kernel, dense),
        "patch_embed_d.proj.weight": (pyramid.get_layer("patch_embed_d").proj.kernel, dense),
        "blocks_d.1.attn.q.weight": (pyramid.get_layer("blocks_d_1").attn.q.kernel, dense),
        "blocks_c.9.mlp.conv2.1.running_var": (pyramid.get_layer("blocks_c_9").mlp.norm3.moving_variance, None),
    }
    for key, (variable, transform) in checks.items():
        expected = transform(state[key]) if transform else state[key]
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=key)
    for letter in "abcd":
        layer = pyramid.get_layer(f"relative_pos_{letter}")
        side = 160 * layer.query_size[0] // 64
        expected = position_bias_resize.resize_relative_position_bias(
            state[layer.name], (side, side), (side // layer.sr_ratio,) * 2, layer.query_size, layer.key_size
        )
        np.testing.assert_allclose(layer.bias.numpy(), expected, atol=1e-6, err_msg=layer.name)
    features = pyramid(np.zeros((1, 64, 96, 3), "float32"))
    assert all(np.isfinite(numpy(v)).all() for v in features.values())
