"""PointwiseConv2D: a 1x1 Conv2D computed as a matrix product, identical to keras.layers.Conv2D."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt.layers import PointwiseConv2D


def _pair(kernel_size=1, strides=1, use_bias=True, activation=None, channels_in=6, filters=5):
    conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, use_bias=use_bias, activation=activation)
    pointwise = PointwiseConv2D(filters, kernel_size, strides=strides, use_bias=use_bias, activation=activation)
    shape = (None, 8, 8, channels_in)
    conv.build(shape)
    pointwise.build(shape)
    rng = np.random.default_rng(0)
    for a, b in zip(conv.weights, pointwise.weights):
        value = rng.normal(size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return conv, pointwise


@pytest.mark.parametrize("use_bias,activation", [(True, None), (False, None), (True, "gelu")])
def test_matches_conv2d_forward_and_backward(use_bias, activation):
    conv, pointwise = _pair(use_bias=use_bias, activation=activation)
    x = tf.constant(np.random.default_rng(1).normal(size=(3, 8, 8, 6)).astype("float32"))
    grads = []
    for layer in (conv, pointwise):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads.append((y, tape.gradient(loss, [x] + layer.trainable_weights)))
    np.testing.assert_allclose(grads[1][0], grads[0][0], atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)


def test_runs_as_a_matmul_and_keeps_the_conv_variables():
    _, pointwise = _pair()
    assert [tuple(w.shape) for w in pointwise.weights] == [(1, 1, 6, 5), (5,)]
    graph = tf.function(pointwise).get_concrete_function(tf.TensorSpec((2, 8, 8, 6))).graph
    types = {op.type for op in graph.get_operations()}
    assert "MatMul" in types and "Conv2D" not in types


def test_unknown_spatial_size_and_other_kernels_fall_back():
    conv, pointwise = _pair()
    fn = tf.function(pointwise, input_signature=[tf.TensorSpec((None, None, None, 6))])
    x = np.random.default_rng(2).normal(size=(2, 5, 7, 6)).astype("float32")
    np.testing.assert_allclose(fn(x), conv(x), atol=1e-5)
    conv3, pointwise3 = _pair(kernel_size=3, strides=2)
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 6)).astype("float32")
    np.testing.assert_allclose(pointwise3(x), conv3(x), atol=1e-5)
    graph = tf.function(pointwise3).get_concrete_function(tf.TensorSpec((2, 8, 8, 6))).graph
    assert "Conv2D" in {op.type for op in graph.get_operations()}


def test_config_round_trip_and_mixed_precision():
    _, pointwise = _pair()
    clone = PointwiseConv2D.from_config(pointwise.get_config())
    assert clone.get_config() == pointwise.get_config()
    half = PointwiseConv2D(4, 1, dtype="mixed_float16")
    y = half(np.ones((1, 3, 3, 2), "float32"))
    assert y.dtype == "float16" and half.kernel.dtype == "float32"
