"""keras_cmt.load_weights: both formats through one all-or-nothing loader."""

import numpy as np
import pytest

import keras_cmt
from conftest import build_micro


def test_weights_h5_round_trip_matches_pth(tmp_path, micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    path = tmp_path / "micro.weights.h5"
    model.save_weights(path)
    again = build_micro(weights=str(path), classifier_activation=None)
    np.testing.assert_array_equal(again.predict(micro_io["input_nhwc"], verbose=0),
                                  model.predict(micro_io["input_nhwc"], verbose=0))


def test_exclude_head_fine_tunes_to_new_classes(micro_checkpoint, micro_io):
    reference = build_micro(include_top=False, pooling="avg", weights=str(micro_checkpoint))
    model = build_micro(classes=3)
    head_before = model.get_layer("head").kernel.numpy().copy()
    keras_cmt.load_weights(model, micro_checkpoint, exclude_head=True)
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), head_before)
    np.testing.assert_allclose(
        model.get_layer("head_conv").kernel.numpy(), reference.get_layer("head_conv").kernel.numpy()
    )


def test_exclude_head_from_a_keras_file(tmp_path, micro_checkpoint):
    path = tmp_path / "ten.weights.h5"
    build_micro(weights=str(micro_checkpoint)).save_weights(path)
    model = build_micro(classes=4)
    keras_cmt.load_weights(model, path, exclude_head=True)
    assert model.get_layer("head").kernel.shape == (64, 4)


def test_failed_load_changes_nothing(micro_checkpoint):
    model = build_micro(classes=3)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError):
        keras_cmt.load_weights(model, micro_checkpoint)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_unexpected_layers_in_a_keras_file_are_listed(tmp_path):
    path = tmp_path / "deeper.weights.h5"
    build_micro(depths=[1, 1, 3, 1]).save_weights(path)
    with pytest.raises(ValueError, match=r"unexpected .*blocks_c_2"):
        keras_cmt.load_weights(build_micro(), path)


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="broken.weights.h5: not a readable Keras"):
        keras_cmt.load_weights(build_micro(), path)


def test_other_input_size_loads_with_resized_biases(micro_checkpoint, micro_io):
    model = build_micro(input_shape=(96, 128, 3), weights=str(micro_checkpoint))
    assert model.get_layer("relative_pos_a").bias.shape == (1, 24 * 32, 3 * 4)
    out = model.predict(np.random.default_rng(0).normal(size=(1, 96, 128, 3)), verbose=0)
    assert np.isfinite(out).all()
    same = build_micro(weights=str(micro_checkpoint))  # identity at the checkpoint's own size
    from keras_cmt.weights.torch_checkpoint import read_torch_checkpoint, select_state_dict

    state = select_state_dict(read_torch_checkpoint(micro_checkpoint))
    np.testing.assert_array_equal(same.get_layer("relative_pos_b").bias.numpy(), state["relative_pos_b"])


def test_source_input_shape_regrids_other_aspect_ratios(tmp_path):
    from keras_cmt.weights import position_bias_resize as resize

    source = build_micro(input_shape=(64, 96, 3))
    path = str(tmp_path / "wide.weights.h5")
    source.save_weights(path)
    target = build_micro(input_shape=(96, 64, 3))  # same bias shapes, transposed grids
    keras_cmt.load_weights(target, path, source_input_shape=(64, 96, 3))
    for letter, sr, stride in (("a", 8, 4), ("b", 4, 8), ("c", 2, 16), ("d", 1, 32)):
        old_q = (64 // stride, 96 // stride)
        layer = target.get_layer(f"relative_pos_{letter}")
        expected = resize.resize_relative_position_bias(
            source.get_layer(layer.name).bias.numpy(), old_q, (old_q[0] // sr, old_q[1] // sr),
            layer.query_size, layer.key_size)
        np.testing.assert_allclose(layer.bias.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"wrong source_input_shape"):
        keras_cmt.load_weights(target, path, source_input_shape=(64, 64, 3))


def test_uninferable_source_grid_asks_for_source_input_shape(tmp_path):
    path = str(tmp_path / "wide.weights.h5")
    build_micro(input_shape=(64, 96, 3)).save_weights(path)
    with pytest.raises(ValueError, match="pass source_input_shape"):
        keras_cmt.load_weights(build_micro(input_shape=(128, 128, 3)), path)
