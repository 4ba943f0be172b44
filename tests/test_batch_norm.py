"""CMTBatchNormalization: Keras' BatchNormalization with a closed-form training gradient, same numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt.layers import CMTBatchNormalization


def _pair(channels=7, **kwargs):
    ours = CMTBatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    keras_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    rng = np.random.default_rng(0)
    for layer in (ours, keras_bn):
        layer.build((None, 4, 5, channels))
    for a, b in zip(ours.weights, keras_bn.weights):
        value = rng.uniform(0.5, 1.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, keras_bn


def _train_step(layer, x, weights):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * weights)
    return y, tape.gradient(loss, [x, layer.gamma, layer.beta])


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["cpu_kernel", "tf_ops"])
@pytest.mark.parametrize("compiled", [False, True])
def test_training_step_matches_keras(compiled, kernels, monkeypatch):
    monkeypatch.setenv("KERAS_CMT_CPU_KERNELS", kernels)  # the fused C++ kernel, then the TensorFlow-op path
    ours, keras_bn = _pair()
    assert ours._uses_closed_form(True, None)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(2.0, 3.0, size=(6, 4, 5, 7)).astype("float32"))
    weights = tf.constant(rng.normal(size=(6, 4, 5, 7)).astype("float32"))
    results = []
    for layer in (ours, keras_bn):
        step = tf.function(_train_step) if compiled else _train_step
        results.append(step(layer, x, weights))
    (y, grads), (y_ref, grads_ref) = results
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean, keras_bn.moving_mean, atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance, keras_bn.moving_variance, rtol=1e-5)
    assert not np.allclose(ours.moving_mean, 0.0)  # the statistics did move


def test_inference_and_frozen_layers_take_keras_path():
    ours, keras_bn = _pair()
    x = np.random.default_rng(2).normal(size=(2, 4, 5, 7)).astype("float32")
    np.testing.assert_allclose(ours(x, training=False), keras_bn(x, training=False), atol=1e-6)
    ours.trainable = keras_bn.trainable = False
    np.testing.assert_allclose(ours(x, training=True), keras_bn(x, training=True), atol=1e-6)
    np.testing.assert_allclose(ours.moving_mean, keras_bn.moving_mean)  # frozen: no update


def test_mixed_precision_keeps_float32_statistics():
    ours, keras_bn = _pair(dtype="mixed_float16")
    x = tf.constant(np.random.default_rng(3).normal(1.0, 2.0, size=(4, 4, 5, 7)).astype("float16"))
    y, y_ref = ours(x, training=True), keras_bn(x, training=True)
    assert y.dtype == "float16" and ours.moving_mean.dtype == "float32"
    np.testing.assert_allclose(np.asarray(y, "float32"), np.asarray(y_ref, "float32"), atol=2e-3)
    np.testing.assert_allclose(ours.moving_variance, keras_bn.moving_variance, rtol=1e-5)


def test_config_round_trip():
    ours, _ = _pair()
    clone = CMTBatchNormalization.from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()
