"""CMTLayerNormalization: Keras' LayerNormalization with a closed-form training gradient, same numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt.layers import CMTLayerNormalization


def _pair(channels=6, **kwargs):
    ours = CMTLayerNormalization(epsilon=1e-6, **kwargs)
    keras_ln = keras.layers.LayerNormalization(epsilon=1e-6, **kwargs)
    rng = np.random.default_rng(0)
    for layer in (ours, keras_ln):
        layer.build((None, 3, 4, channels))
    for a, b in zip(ours.weights, keras_ln.weights):
        value = rng.normal(size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, keras_ln


@pytest.mark.parametrize("kernels", ["1", "0"], ids=["cpu_kernel", "tf_ops"])
@pytest.mark.parametrize("compiled", [False, True])
def test_training_gradient_matches_keras(compiled, kernels, monkeypatch):
    monkeypatch.setenv("KERAS_CMT_CPU_KERNELS", kernels)  # the fused C++ kernel, then the TensorFlow-op path
    ours, keras_ln = _pair()
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(1.0, 2.0, size=(2, 3, 4, 6)).astype("float32"))
    weights = tf.constant(rng.normal(size=x.shape).astype("float32"))

    def step(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weights)
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    (y, grads), (y_ref, grads_ref) = [(tf.function(step) if compiled else step)(layer) for layer in (ours, keras_ln)]
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_inference_graph_is_keras_own():
    ours, keras_ln = _pair()
    x = np.random.default_rng(2).normal(size=(2, 3, 4, 6)).astype("float32")
    np.testing.assert_allclose(ours(x), keras_ln(x), atol=1e-6)
    graph = tf.function(lambda t: ours(t, training=False)).get_concrete_function(tf.TensorSpec(x.shape)).graph
    assert "IdentityN" not in {op.type for op in graph.get_operations()}  # no custom gradient when serving
    graph = tf.function(lambda t: ours(t, training=True)).get_concrete_function(tf.TensorSpec(x.shape)).graph
    assert "IdentityN" in {op.type for op in graph.get_operations()}


def test_mixed_precision_and_config():
    ours, keras_ln = _pair(dtype="mixed_float16")
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 3, 4, 6)).astype("float16"))
    y = ours(x, training=True)
    assert y.dtype == "float16"
    np.testing.assert_allclose(np.asarray(y, "float32"), np.asarray(keras_ln(x), "float32"), atol=5e-3)
    clone = CMTLayerNormalization.from_config(ours.get_config())
    assert clone.get_config() == ours.get_config()
