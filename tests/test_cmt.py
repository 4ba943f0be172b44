"""The CMT builder: parity with the official code, shapes, serialisation, training behaviour, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cmt
from conftest import MICRO_CONFIG, SHARED_FIXTURES, build_micro


def test_micro_fixture_parity(micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    logits = model.predict(micro_io["input_nhwc"], verbose=0)
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4
    features = keras.Model(model.input, model.get_layer("head_dropout").output)(micro_io["input_nhwc"])
    assert np.abs(np.asarray(features) - micro_io["pre_logits"]).max() <= 1e-4


def test_cmt_tiny_fixture_parity():
    checkpoint = SHARED_FIXTURES / "cmt_ti_seed0.pth"
    if not checkpoint.exists():
        pytest.skip(f"{checkpoint} is not beside this checkout (CI provides ../shared)")
    io = np.load(SHARED_FIXTURES / "cmt_ti_seed0_io.npz")
    model = keras_cmt.CMTTiny(weights=str(checkpoint), classifier_activation=None)
    logits = model.predict(io["input_nhwc"], verbose=0)
    assert np.abs(logits - io["logits"]).max() <= 1e-4
    keras.backend.clear_session()


def test_softmax_output_is_a_distribution(micro_checkpoint, micro_io):
    probs = build_micro(weights=str(micro_checkpoint)).predict(micro_io["input_nhwc"], verbose=0)
    np.testing.assert_allclose(probs, tf.nn.softmax(micro_io["logits"]).numpy(), atol=1e-5)


@pytest.mark.parametrize("pooling, shape", [(None, (2, 2, 2, 64)), ("avg", (2, 64)), ("max", (2, 64))])
def test_include_top_false(pooling, shape, micro_checkpoint, micro_io):
    model = build_micro(include_top=False, pooling=pooling, weights=str(micro_checkpoint))
    out = np.asarray(model(micro_io["input_nhwc"]))
    assert out.shape == shape
    assert "head" not in [layer.name for layer in model.layers]
    if pooling == "avg":
        # Without dropout in inference, the pooled features are the official pre-logits.
        assert np.abs(out - micro_io["pre_logits"]).max() <= 1e-4


def test_non_square_input_192x256():
    model = build_micro(input_shape=(192, 256, 3))
    out = model.predict(np.random.default_rng(0).normal(size=(1, 192, 256, 3)), verbose=0)
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert tuple(model.get_layer("relative_pos_a").bias.shape) == (1, 48 * 64, 6 * 8)
    assert model.get_layer("stage_4").output.shape[1:3] == (6, 8)


def test_input_tensor_is_used_as_the_input():
    inputs = keras.Input((64, 64, 3))
    model = build_micro(input_tensor=inputs)
    assert model.inputs[0] is inputs


def test_keras_file_round_trip_without_custom_objects(tmp_path, micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), drop_path_rate=0.1)
    path = tmp_path / "micro.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        restored.predict(micro_io["input_nhwc"], verbose=0), model.predict(micro_io["input_nhwc"], verbose=0)
    )
    assert restored.get_layer("blocks_d_0").drop_path.rate == pytest.approx(0.1)


def test_gradients_reach_every_trainable_weight():
    model = build_micro(drop_path_rate=0.0)
    x = tf.random.normal((2, 64, 64, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g.numpy())]
    assert not missing, missing


def test_drop_path_only_in_training():
    model = build_micro(drop_path_rate=0.5, head_dropout=0.0)
    x = tf.random.normal((4, 64, 64, 3), seed=1)
    inference = [model(x, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    block = model.get_layer("blocks_d_0")
    assert block.drop_path.rate == pytest.approx(0.5)  # linear rule: the last block gets the full rate
    features = tf.random.normal((8, 2, 2, 128))
    bias = model.get_layer("relative_pos_d")(features)
    trained = [block(features, bias, training=True).numpy() for _ in range(2)]
    assert not np.array_equal(trained[0], trained[1])
    np.testing.assert_array_equal(block(features, bias).numpy(), block(features, bias, training=False).numpy())


def test_drop_path_rates_increase_linearly():
    model = build_micro(drop_path_rate=0.3)
    rates = [model.get_layer(n).drop_path.rate for n in ("blocks_a_0", "blocks_b_0", "blocks_c_0", "blocks_c_1",
                                                          "blocks_d_0")]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 5), atol=1e-7)


@pytest.mark.parametrize("shape", [(100, 64, 3), (64, 48, 3), (None, None, 3)])
def test_input_sides_must_be_multiples_of_32(shape):
    with pytest.raises(ValueError, match=r"input_shape"):
        build_micro(input_shape=shape)


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
        keras_cmt.CMT(depths=[1, 1, 1, 1], embed_dims=[16, 32, 64, 128], num_heads=[1, 2, 4, 8],
                      mlp_ratios=[2] * 4, stem_channels=8, head_channels=64, input_shape=(64, 64, 3), classes=10,
                      weights=str(micro_checkpoint))


def test_variant_checkpoint_into_another_variant_is_refused(micro_checkpoint):
    with pytest.raises(ValueError, match=r"does not match this model.*embed_dims \[16, 32, 64, 128\]"):
        keras_cmt.CMTTiny(input_shape=(64, 64, 3), classes=10, weights=str(micro_checkpoint))


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


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_training_forward_takes_every_closed_form_gradient(monkeypatch, cpu_kernels):
    """model.fit's forward (training=True) goes through the cheaper-gradient paths of every BatchNorm,
    LayerNorm and exact GELU: the fused CPU kernels where they are available, else the TensorFlow-op closed forms;
    inference goes through none of them."""
    from keras_cmt import kernels
    from keras_cmt.layers import batch_norm, gelu, layer_norm

    from keras_cmt.kernels.training_ops import _accelerator_visible

    if cpu_kernels and _accelerator_visible():
        pytest.skip("a GPU/TPU is visible: the CPU kernels are not used there")
    monkeypatch.setenv("KERAS_CMT_CPU_KERNELS", "1" if cpu_kernels else "0")
    calls = {"bn": 0, "ln": 0, "gelu": 0, "bn_kernel": 0, "ln_kernel": 0}

    def counting(key, fn):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            calls[key] += result is not None
            return result
        return wrapped

    monkeypatch.setattr(batch_norm, "_train_batch_norm", counting("bn", batch_norm._train_batch_norm))
    monkeypatch.setattr(layer_norm, "_train_layer_norm", counting("ln", layer_norm._train_layer_norm))
    monkeypatch.setattr(gelu, "_gelu_with_closed_form_gradient", counting("gelu", gelu._gelu_with_closed_form_gradient))
    monkeypatch.setattr(kernels, "batch_norm", counting("bn_kernel", kernels.batch_norm))
    monkeypatch.setattr(kernels, "layer_norm", counting("ln_kernel", kernels.layer_norm))
    model = build_micro()
    x = np.zeros((2, 64, 64, 3), "float32")
    model(x, training=False)
    assert set(calls.values()) == {0}
    model(x, training=True)
    blocks = sum(MICRO_CONFIG["depths"])
    # BatchNorm: 3 stem + 3 per IRFFN + the reduction's in stages a-c + head; LayerNorm: 2 per block + 4 patch
    # embeddings; GELU: 3 stem + 2 per IRFFN, every one of them inside its BatchNorm's kernel when that is used.
    bn, ln = 3 + 3 * blocks + sum(MICRO_CONFIG["depths"][:3]) + 1, 2 * blocks + 4
    if cpu_kernels:
        assert calls == {"bn": 0, "ln": 0, "gelu": 0, "bn_kernel": bn, "ln_kernel": ln}
    else:
        assert calls == {"bn": bn, "ln": ln, "gelu": 3 + 2 * blocks, "bn_kernel": 0, "ln_kernel": 0}
