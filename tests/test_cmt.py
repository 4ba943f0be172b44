"""The CMT builder: parity with the official code, shapes, serialisation, training behaviour, errors. On every
backend."""

import keras
import numpy as np
import pytest

import keras_cmt
from conftest import MICRO_CONFIG, build_micro, channels_last, image_shape, numpy, to_model_layout, trainable_gradients

pytestmark = pytest.mark.all_backends


def test_micro_fixture_parity(micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    x = to_model_layout(micro_io["input_nhwc"])
    assert np.abs(model.predict(x, verbose=0) - micro_io["logits"]).max() <= 1e-4
    features = keras.Model(model.input, model.get_layer("head_dropout").output)(x)
    assert np.abs(numpy(features) - micro_io["pre_logits"]).max() <= 1e-4


def test_cmt_tiny_fixture_parity(ti_fixture):
    checkpoint, io = ti_fixture
    model = keras_cmt.CMTTiny(weights=checkpoint, classifier_activation=None)
    logits = numpy(model(to_model_layout(io["input_nhwc"])))
    assert np.abs(logits - io["logits"]).max() <= 1e-4
    keras.backend.clear_session()


def test_softmax_output_is_a_distribution(micro_checkpoint, micro_io):
    probs = numpy(build_micro(weights=str(micro_checkpoint))(to_model_layout(micro_io["input_nhwc"])))
    logits = micro_io["logits"].astype("float64")
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_include_top_false(pooling, micro_checkpoint, micro_io):
    model = build_micro(include_top=False, pooling=pooling, weights=str(micro_checkpoint))
    out = numpy(model(to_model_layout(micro_io["input_nhwc"])))
    feature_map = (2, 2, 2, 64) if channels_last() else (2, 64, 2, 2)
    assert out.shape == ((2, 64) if pooling else feature_map)
    assert "head" not in [layer.name for layer in model.layers]
    if pooling == "avg":
        # Without dropout in inference, the pooled features are the official pre-logits.
        assert np.abs(out - micro_io["pre_logits"]).max() <= 1e-4


def test_non_square_input_192x256():
    model = build_micro(input_shape=image_shape(192, 256))
    x = np.random.default_rng(0).normal(size=(1,) + image_shape(192, 256)).astype("float32")
    out = numpy(model(x))
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert tuple(model.get_layer("relative_pos_a").bias.shape) == (1, 48 * 64, 6 * 8)
    assert tuple(model.get_layer("stage_4").output.shape[1:]) == ((6, 8, 128) if channels_last() else (128, 6, 8))


def test_input_tensor_is_used_as_the_input():
    inputs = keras.Input(image_shape(64, 64))
    model = build_micro(input_tensor=inputs)
    assert model.inputs[0] is inputs


def test_keras_file_round_trip_without_custom_objects(tmp_path, micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), drop_path_rate=0.1)
    path = tmp_path / "micro.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = to_model_layout(micro_io["input_nhwc"])
    np.testing.assert_array_equal(numpy(restored(x)), numpy(model(x)))
    assert restored.get_layer("blocks_d_0").drop_path.rate == pytest.approx(0.1)


def test_gradients_reach_every_trainable_weight():
    model = build_micro(drop_path_rate=0.0)
    x = np.random.default_rng(0).normal(size=(2,) + image_shape(64, 64)).astype("float32")
    grads = trainable_gradients(model, x)
    missing = [v.path for v, g in zip(model.trainable_weights, grads) if g is None or not np.any(g)]
    assert not missing, missing


def test_fit_trains_and_updates_the_batchnorm_statistics():
    model = build_micro(drop_path_rate=0.1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4,) + image_shape(64, 64)).astype("float32")
    y = rng.integers(0, 10, 4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moving = [v for v in model.non_trainable_weights if "moving_mean" in v.path]
    assert moving and all(np.any(numpy(v) != 0) for v in moving)


def test_fit_lowers_the_loss_on_a_fixed_batch():
    model = build_micro(head_dropout=0.0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8,) + image_shape(64, 64)).astype("float32")
    y = np.arange(8) % 10

    def loss():  # in training mode: batch statistics, as fit sees them
        probabilities = numpy(model(x, training=True)).astype("float64")
        return float(-np.log(probabilities[np.arange(8), y]).mean())

    before = loss()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    model.fit(np.tile(x, (8, 1, 1, 1)), np.tile(y, 8), batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert loss() < before * 0.7, (before, loss())


def test_drop_path_only_in_training():
    model = build_micro(drop_path_rate=0.5, head_dropout=0.0)
    x = np.random.default_rng(1).normal(size=(4,) + image_shape(64, 64)).astype("float32")
    inference = [numpy(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    block = model.get_layer("blocks_d_0")
    assert block.drop_path.rate == pytest.approx(0.5)  # linear rule: the last block gets the full rate
    features = to_model_layout(np.random.default_rng(2).normal(size=(8, 2, 2, 128)).astype("float32"))
    bias = model.get_layer("relative_pos_d")(features)
    trained = [numpy(block(features, bias, training=True)) for _ in range(2)]
    assert not np.array_equal(trained[0], trained[1])
    np.testing.assert_array_equal(numpy(block(features, bias)), numpy(block(features, bias, training=False)))


def test_drop_path_rates_increase_linearly():
    model = build_micro(drop_path_rate=0.3)
    rates = [
        model.get_layer(n).drop_path.rate
        for n in ("blocks_a_0", "blocks_b_0", "blocks_c_0", "blocks_c_1", "blocks_d_0")
    ]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 5), atol=1e-7)


@pytest.mark.parametrize("hw", [(100, 64), (64, 48), (0, 64)])
def test_input_sides_must_be_multiples_of_32(hw):
    with pytest.raises(ValueError, match=r"input_shape"):
        build_micro(input_shape=image_shape(*hw))


def test_unknown_weights_string_is_a_clear_error():
    with pytest.raises(ValueError, match="'imagenet21k'.*no such file"):
        build_micro(weights="imagenet21k")


def test_imagenet_needs_1000_classes_with_top():
    with pytest.raises(ValueError, match="classes=1000"):
        keras_cmt.CMTTiny(weights="imagenet", classes=10)


def test_classes_mismatch_with_a_checkpoint(micro_checkpoint):
    with pytest.raises(ValueError, match=r"10 classes but the model has classes=3.*exclude_head"):
        build_micro(classes=3, weights=str(micro_checkpoint))


def test_checkpoint_of_another_configuration_is_refused(micro_checkpoint):
    with pytest.raises(ValueError, match=r"does not match this model.*depths \[1, 1, 2, 1\]"):
        keras_cmt.CMT(
            **dict(MICRO_CONFIG, depths=[1, 1, 1, 1]),
            input_shape=image_shape(64, 64),
            classes=10,
            weights=str(micro_checkpoint),
        )


def test_variant_checkpoint_into_another_variant_is_refused(micro_checkpoint):
    with pytest.raises(ValueError, match=r"does not match this model.*embed_dims \[16, 32, 64, 128\]"):
        keras_cmt.CMTTiny(input_shape=image_shape(64, 64), classes=10, weights=str(micro_checkpoint))


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(ValueError, match=r"notes.pth: not a PyTorch checkpoint"):
        build_micro(weights=str(path))


def test_bad_list_lengths_and_pooling_are_refused():
    with pytest.raises(ValueError, match="depths must have 4 entries"):
        keras_cmt.CMT(depths=[1, 1, 1], embed_dims=[8] * 4, num_heads=[1] * 4, mlp_ratios=[1] * 4, stem_channels=4)
    with pytest.raises(ValueError, match="pooling"):
        build_micro(include_top=False, pooling="mean")


def test_the_model_is_plain_keras_layers():
    """Stock Keras layers and CMT's parts only: no TensorFlow, no custom gradients, nothing compiled."""
    model = build_micro()
    ours = {type(layer).__module__.split(".")[0] for layer in model._flatten_layers(include_self=False)}
    assert ours <= {"keras", "keras_cmt"}
    stem = [
        type(model.get_layer(name)).__name__
        for name in ("stem_pad1", "stem_conv1", "stem_gelu1", "stem_norm1", "head_conv", "head_norm")
    ]
    assert stem == ["ZeroPadding2D", "Conv2D", "Activation", "BatchNormalization", "Conv2D", "BatchNormalization"]
    assert model.get_layer("stem_gelu1").activation is keras_cmt.layers.exact_gelu
