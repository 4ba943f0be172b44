"""The relative-position bias resize: identity at the same size, PyTorch's bilinear (align_corners=False) over the
query grid and over the key grid otherwise, and the loader using it for models of another input size."""

import os
import sys

import numpy as np
import pytest
from keras import ops

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

from conftest import image_shape, numpy, to_model_layout  # noqa: E402

import keras_cmt  # noqa: E402
from keras_cmt.weights import position_bias_resize as resize  # noqa: E402

pytestmark = pytest.mark.all_backends


def test_same_size_is_returned_unchanged():
    bias = np.random.default_rng(0).standard_normal((4, 16 * 12, 2 * 3)).astype("float32")
    out = resize.resize_relative_position_bias(bias, (16, 12), (2, 3), (16, 12), (2, 3))
    assert out.dtype == bias.dtype
    np.testing.assert_array_equal(out, bias)


def test_matches_pytorch_bilinear_on_a_known_case():
    # F.interpolate(torch.tensor([[1., 2.], [3., 4.]])[None, None], size=(4, 4), mode="bilinear",
    # align_corners=False), a documented PyTorch result.
    expected = np.array(
        [[1.00, 1.25, 1.75, 2.00], [1.50, 1.75, 2.25, 2.50], [2.50, 2.75, 3.25, 3.50], [3.00, 3.25, 3.75, 4.00]]
    )
    bias = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)  # one head, a 2x2 query grid, a 1x1 key grid
    out = resize.resize_relative_position_bias(bias, (2, 2), (1, 1), (4, 4), (1, 1))
    np.testing.assert_allclose(out.reshape(4, 4), expected, atol=1e-12)


@pytest.mark.parametrize(
    "old_q,old_k,new_q,new_k",
    [
        ((14, 14), (7, 7), (16, 16), (8, 8)),  # up, square (CMT-S stage b, 224 -> 256)
        ((8, 8), (1, 1), (6, 10), (1, 1)),  # down and up, non-square, 1x1 keys
        ((16, 16), (2, 2), (24, 32), (3, 4)),  # non-square up on both grids
        ((7, 7), (7, 7), (3, 5), (3, 5)),  # down (no antialiasing, as PyTorch's bilinear)
    ],
)
def test_resizes_query_and_key_grids_like_half_pixel_bilinear(old_q, old_k, new_q, new_k):
    rng = np.random.default_rng(1)
    heads = 2
    bias = rng.standard_normal((heads, old_q[0] * old_q[1], old_k[0] * old_k[1])).astype("float32")
    out = resize.resize_relative_position_bias(bias, old_q, old_k, new_q, new_k)
    assert out.shape == (heads, new_q[0] * new_q[1], new_k[0] * new_k[1]) and out.dtype == np.float32

    # Independent reference: the backend's image resize (bilinear, half-pixel centres, no antialias) over the
    # query grid, then over the key grid.
    grid = bias.reshape(heads, old_q[0], old_q[1], -1)  # (heads, qh, qw, Nk) as NHWC images
    grid = numpy(ops.image.resize(grid, new_q, interpolation="bilinear", antialias=False, data_format="channels_last"))
    grid = grid.reshape(heads, new_q[0] * new_q[1], old_k[0], old_k[1]).transpose(0, 2, 3, 1)
    grid = numpy(
        ops.image.resize(
            grid.reshape(heads * 1, old_k[0], old_k[1], -1),
            new_k,
            interpolation="bilinear",
            antialias=False,
            data_format="channels_last",
        )
    )
    reference = grid.reshape(heads, new_k[0] * new_k[1], new_q[0] * new_q[1]).transpose(0, 2, 1)
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_constant_and_linear_biases_are_preserved():
    q = np.arange(8, dtype="float64")
    # A bias linear in the query row: interior values stay on the line after resizing (bilinear is exact there).
    bias = np.repeat(q[:, None], 8, axis=1).reshape(1, 64, 1)
    out = resize.resize_relative_position_bias(bias, (8, 8), (1, 1), (16, 16), (1, 1)).reshape(16, 16)
    rows = (np.arange(16) + 0.5) / 2 - 0.5
    interior = slice(1, 15)
    np.testing.assert_allclose(out[interior, 0], rows[interior], atol=1e-12)
    const = np.full((3, 64, 4), 2.5)
    np.testing.assert_allclose(resize.resize_relative_position_bias(const, (8, 8), (2, 2), (4, 12), (1, 3)), 2.5)


def test_infer_grid():
    assert resize.infer_grid(196, like=(16, 16)) == (14, 14)
    assert resize.infer_grid(16 * 24, like=(32, 48)) == (16, 24)  # a non-square file, same aspect as the model
    with pytest.raises(ValueError, match="cannot infer a 2:3 grid holding 7 positions"):
        resize.infer_grid(7, like=(2, 3))


def test_loader_resizes_from_a_weights_file_saved_at_another_size(tmp_path):
    source = helpers.micro_model(input_shape=(64, 64, 3))
    keras_cmt.weights.loading.assign_state_dict(source, helpers.micro_state_dict())
    path = str(tmp_path / "micro64.weights.h5")
    source.save_weights(path)

    # Loading at the same size is the identity...
    same = helpers.micro_model(input_shape=(64, 64, 3))
    keras_cmt.load_weights(same, path)
    for letter in "abcd":
        np.testing.assert_array_equal(
            same.get_layer(f"relative_pos_{letter}").bias.numpy(),
            source.get_layer(f"relative_pos_{letter}").bias.numpy(),
        )

    # ...and at 128x96 every stage's bias is resized over its query and key grids; the model runs.
    bigger = helpers.micro_model(input_shape=(128, 96, 3))
    keras_cmt.load_weights(bigger, path)
    for letter, sr, stride in (("a", 8, 4), ("b", 4, 8), ("c", 2, 16), ("d", 1, 32)):
        layer = bigger.get_layer(f"relative_pos_{letter}")
        old_q = (64 // stride, 64 // stride)
        expected = resize.resize_relative_position_bias(
            source.get_layer(f"relative_pos_{letter}").bias.numpy(),
            old_q,
            (old_q[0] // sr, old_q[1] // sr),
            layer.query_size,
            layer.key_size,
        )
        assert layer.query_size == (128 // stride, 96 // stride)
        np.testing.assert_allclose(layer.bias.numpy(), expected, atol=1e-6)
    out = numpy(bigger(np.random.default_rng(0).uniform(-1, 1, (1, 128, 96, 3)).astype("float32")))
    assert out.shape == (1, 10) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(), 1.0, atol=1e-5)

    # Back from the non-square file to the square size of the checkpoint.
    back = helpers.micro_model(input_shape=(256, 192, 3), include_top=False)
    bigger.save_weights(str(tmp_path / "micro128x96.weights.h5"))
    keras_cmt.load_weights(back, str(tmp_path / "micro128x96.weights.h5"))
    layer = back.get_layer("relative_pos_d")
    expected = resize.resize_relative_position_bias(
        bigger.get_layer("relative_pos_d").bias.numpy(), (4, 3), (4, 3), (8, 6), (8, 6)
    )
    np.testing.assert_allclose(layer.bias.numpy(), expected, atol=1e-6)


def test_a_bias_with_other_heads_is_reported(tmp_path):
    state = dict(helpers.micro_state_dict())
    state["relative_pos_b"] = np.zeros((3,) + state["relative_pos_b"].shape[1:], "float32")
    model = helpers.micro_model()
    # Named either by shape or by head count (both say which layer and what differs).
    with pytest.raises(ValueError, match=r"relative_pos_b.*(checkpoint 3x64x4 vs model 2x64x4|3 heads, the model 2)"):
        keras_cmt.weights.loading.assign_state_dict(model, state)


@pytest.mark.parametrize(
    "old_q,new_q,sr", [((8, 8), (8, 8), 4), ((8, 8), (12, 6), 4), ((6, 10), (4, 4), 2), ((2, 2), (5, 3), 1)]
)
def test_call_time_resize_is_the_loaders_resize(old_q, new_q, sr):
    from keras_cmt.layers.relative_position_bias import resize_bias

    rng = np.random.default_rng(2)
    old_k, new_k = (old_q[0] // sr, old_q[1] // sr), (new_q[0] // sr, new_q[1] // sr)
    bias = rng.standard_normal((3, old_q[0] * old_q[1], old_k[0] * old_k[1])).astype("float32")
    expected = resize.resize_relative_position_bias(bias, old_q, old_k, new_q, new_k)
    np.testing.assert_allclose(numpy(resize_bias(bias, old_q, old_k, new_q, new_k)), expected, atol=1e-5)


def test_a_model_of_any_input_size_matches_fixed_size_models(tmp_path):
    """height and width None: the biases stay at the default grid and are resized when called, which gives what a
    model built for that size (its biases resized by the loader) gives."""
    any_size = helpers.micro_model(input_shape=image_shape(None, None), default_size=64)
    keras_cmt.weights.loading.assign_state_dict(any_size, helpers.micro_state_dict())
    assert any_size.get_layer("relative_pos_a").query_size == (16, 16)  # the micro model's default size, 64
    path = str(tmp_path / "any.weights.h5")
    any_size.save_weights(path)
    rng = np.random.default_rng(3)
    for height, width in ((64, 64), (96, 128)):
        fixed = helpers.micro_model(input_shape=image_shape(height, width))
        keras_cmt.load_weights(fixed, path)
        x = to_model_layout(rng.uniform(-1, 1, (2, height, width, 3)).astype("float32"))
        np.testing.assert_allclose(numpy(any_size(x)), numpy(fixed(x)), atol=1e-5)
