"""keras_cmt.load_weights: official .pth checkpoints through the key mapping, Keras .weights.h5 files through Keras,
both all or nothing. On every backend."""

import numpy as np
import pytest

import keras_cmt
from conftest import build_micro, image_shape, numpy, to_model_layout

pytestmark = pytest.mark.all_backends


def test_weights_h5_round_trip_matches_pth(tmp_path, micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    path = tmp_path / "micro.weights.h5"
    model.save_weights(path)
    again = build_micro(weights=str(path), classifier_activation=None)
    x = to_model_layout(micro_io["input_nhwc"])
    np.testing.assert_array_equal(numpy(again(x)), numpy(model(x)))


def test_a_weights_file_saved_by_keras_loads_with_keras_load_weights_too(tmp_path, micro_checkpoint):
    """Our files are plain Keras files: Keras' own load_weights reads them into a model of the same size."""
    path = tmp_path / "micro.weights.h5"
    build_micro(weights=str(micro_checkpoint)).save_weights(path)
    model = build_micro()
    model.load_weights(path)
    reference = build_micro(weights=str(micro_checkpoint))
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)


def test_exclude_head_fine_tunes_to_new_classes(micro_checkpoint):
    reference = build_micro(include_top=False, pooling="avg", weights=str(micro_checkpoint))
    model = build_micro(classes=3)
    head_before = numpy(model.get_layer("head").kernel).copy()
    keras_cmt.load_weights(model, micro_checkpoint, exclude_head=True)
    np.testing.assert_array_equal(numpy(model.get_layer("head").kernel), head_before)
    np.testing.assert_allclose(
        numpy(model.get_layer("head_conv").kernel), numpy(reference.get_layer("head_conv").kernel)
    )


def test_exclude_head_from_a_keras_file(tmp_path, micro_checkpoint):
    path = tmp_path / "ten.weights.h5"
    build_micro(weights=str(micro_checkpoint)).save_weights(path)
    model = build_micro(classes=4)
    head_before = numpy(model.get_layer("head").kernel).copy()
    keras_cmt.load_weights(model, path, exclude_head=True)
    np.testing.assert_array_equal(numpy(model.get_layer("head").kernel), head_before)
    reference = build_micro(weights=str(micro_checkpoint))
    np.testing.assert_array_equal(
        numpy(model.get_layer("blocks_d_0").mlp.conv2.kernel), numpy(reference.get_layer("blocks_d_0").mlp.conv2.kernel)
    )


def test_a_headless_model_loads_a_file_with_a_head(tmp_path, micro_checkpoint):
    path = tmp_path / "ten.weights.h5"
    build_micro(weights=str(micro_checkpoint)).save_weights(path)
    model = build_micro(include_top=False, pooling="max", weights=str(path))
    assert "head" not in [layer.name for layer in model.layers]


def test_classes_mismatch_in_a_keras_file(tmp_path, micro_checkpoint):
    path = tmp_path / "ten.weights.h5"
    build_micro(weights=str(micro_checkpoint)).save_weights(path)
    with pytest.raises(
        ValueError,
        match=r"ten.weights.h5: its classifier has 10 classes but the model has "
        r"classes=3.*exclude_head=True",
    ):
        build_micro(classes=3, weights=str(path))


@pytest.mark.parametrize("source", ["pth", "h5"])
def test_failed_load_changes_nothing(tmp_path, micro_checkpoint, source):
    path = micro_checkpoint
    if source == "h5":
        path = tmp_path / "ten.weights.h5"
        build_micro(weights=str(micro_checkpoint)).save_weights(path)
    model = build_micro(classes=3)
    before = [numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError):
        keras_cmt.load_weights(model, path)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(numpy(w), b)


def test_a_keras_file_of_another_configuration_is_listed(tmp_path):
    path = tmp_path / "deeper.weights.h5"
    build_micro(depths=[1, 1, 3, 1]).save_weights(path)
    with pytest.raises(ValueError, match=r"deeper.weights.h5 does not fit this model.*blocks_c_2") as error:
        keras_cmt.load_weights(build_micro(), path)
    assert "\n" not in str(error.value)


def test_not_a_weights_file(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="broken.weights.h5: not a readable Keras"):
        keras_cmt.load_weights(build_micro(), path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothing.weights.h5: no such weights file"):
        keras_cmt.load_weights(build_micro(), tmp_path / "nothing.weights.h5")


def test_other_input_size_loads_with_resized_biases(micro_checkpoint):
    model = build_micro(input_shape=image_shape(96, 128), weights=str(micro_checkpoint))
    assert model.get_layer("relative_pos_a").bias.shape == (1, 24 * 32, 3 * 4)
    out = numpy(model(np.random.default_rng(0).normal(size=(1,) + image_shape(96, 128)).astype("float32")))
    assert np.isfinite(out).all()
    same = build_micro(weights=str(micro_checkpoint))  # identity at the checkpoint's own size
    from keras_cmt.weights.torch_checkpoint import read_torch_checkpoint, select_state_dict

    state = select_state_dict(read_torch_checkpoint(micro_checkpoint))
    np.testing.assert_array_equal(numpy(same.get_layer("relative_pos_b").bias), state["relative_pos_b"])


def test_keras_files_regrid_other_aspect_ratios_from_their_recorded_grid(tmp_path):
    """64x96 -> 96x64 keeps every bias's shape but not its grid: the file's recorded grid tells them apart."""
    from keras_cmt.weights import position_bias_resize as resize

    source = build_micro(input_shape=image_shape(64, 96))
    path = str(tmp_path / "wide.weights.h5")
    source.save_weights(path)
    target = build_micro(input_shape=image_shape(96, 64))
    keras_cmt.load_weights(target, path)
    for letter, sr, stride in (("a", 8, 4), ("b", 4, 8), ("c", 2, 16), ("d", 1, 32)):
        old_q = (64 // stride, 96 // stride)
        layer = target.get_layer(f"relative_pos_{letter}")
        expected = resize.resize_relative_position_bias(
            numpy(source.get_layer(layer.name).bias),
            old_q,
            (old_q[0] // sr, old_q[1] // sr),
            layer.query_size,
            layer.key_size,
        )
        np.testing.assert_allclose(numpy(layer.bias), expected, atol=1e-6)
    # A larger square model from the same file, and through Keras' own load_weights.
    bigger = build_micro(input_shape=image_shape(128, 128))
    bigger.load_weights(path)
    layer = bigger.get_layer("relative_pos_d")
    expected = resize.resize_relative_position_bias(
        numpy(source.get_layer("relative_pos_d").bias), (2, 3), (2, 3), (4, 4), (4, 4)
    )
    np.testing.assert_allclose(numpy(layer.bias), expected, atol=1e-6)
