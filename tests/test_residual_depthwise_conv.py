"""ResidualDepthwiseConv2D: x + DepthwiseConv2D(x) as one convolution, with a plain DepthwiseConv2D's variables."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt.layers import InvertedResidualFFN, LocalPerceptionUnit, ResidualDepthwiseConv2D


def _pair(channels=6, seed=0):
    """A residual layer and a plain DepthwiseConv2D holding the same random (non-zero bias) weights."""
    rng = np.random.default_rng(seed)
    residual = ResidualDepthwiseConv2D(3, padding="same", name="dw")
    plain = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")
    residual.build((None, 5, 7, channels))
    plain.build((None, 5, 7, channels))
    residual.set_weights([rng.normal(size=w.shape).astype("float32") for w in residual.get_weights()])
    plain.set_weights(residual.get_weights())
    return residual, plain


def test_equals_input_plus_depthwise_conv_in_value_and_gradient():
    residual, plain = _pair()
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 5, 7, 6)), "float32")
    results = []
    for layer, fn in ((residual, residual), (plain, lambda t: t + plain(t))):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_variables])])
    for got, expected in zip(*results):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    # The variables are the plain layer's (names, shapes, values): checkpoints and the PyTorch mapping are unchanged.
    assert [(v.path, v.shape) for v in residual.weights] == [(v.path, v.shape) for v in plain.weights]
    np.testing.assert_array_equal(residual.kernel.numpy(), plain.kernel.numpy())


def test_configurations_that_are_not_a_residual_are_refused():
    for kwargs in (dict(kernel_size=2, padding="same"), dict(kernel_size=3, padding="valid"),
                   dict(kernel_size=3, padding="same", strides=2), dict(kernel_size=3, padding="same", dilation_rate=2),
                   dict(kernel_size=3, padding="same", depth_multiplier=2),
                   dict(kernel_size=3, padding="same", activation="relu")):  # act(x + conv) is not x + act(conv)
        with pytest.raises(ValueError, match="residual depthwise convolution keeps the input's shape"):
            ResidualDepthwiseConv2D(name="bad", **kwargs)


def test_serializes():
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, ResidualDepthwiseConv2D(3, padding="same")(inputs))
    clone = keras.Model.from_config(model.get_config())
    assert isinstance(clone.layers[-1], ResidualDepthwiseConv2D)
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(2).normal(size=(1, 6, 6, 4)).astype("float32")
    np.testing.assert_allclose(clone(x), model(x), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_lower_precision_rounds_as_the_separate_addition(policy):
    """In float16/bfloat16 a `w + 1` centre tap would carry a fixed rounding error per channel; there the layer
    computes x + (conv + bias) in the compute dtype, bit for bit as the plain layer and an Add do."""
    residual = ResidualDepthwiseConv2D(3, padding="same", dtype=policy)
    plain = keras.layers.DepthwiseConv2D(3, padding="same", dtype=policy)
    residual.build((None, 6, 6, 4))
    plain.build((None, 6, 6, 4))
    rng = np.random.default_rng(4)
    residual.set_weights([rng.normal(size=w.shape).astype("float32") for w in residual.get_weights()])  # bias != 0
    plain.set_weights(residual.get_weights())
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32") * 3
    y = residual(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    assert residual.kernel.dtype == "float32"
    expected = keras.ops.add(keras.ops.cast(x, y.dtype), plain(x))
    np.testing.assert_array_equal(np.asarray(y, "float32"), np.asarray(expected, "float32"))


@pytest.mark.parametrize("block", ["lpu", "irffn"])
def test_inference_graph_keeps_grappler_optimizations(block, capfd):
    """`x + dwconv(x)` written as an Add made TF 2.21's oneDNN remapper fail on predict/evaluate graphs
    ("remapper failed", "Node ... has an empty op name"), after which TensorFlow ran the function unoptimized."""
    from tensorflow.python.util import _pywrap_util_port

    if not _pywrap_util_port.IsMklEnabled():
        pytest.skip("this TensorFlow runs without oneDNN (TF_ENABLE_ONEDNN_OPTS=0): no remapper fusion to break")
    layer = LocalPerceptionUnit() if block == "lpu" else InvertedResidualFFN(8, 16)
    inputs = keras.Input((8, 8, 8))
    model = keras.Model(inputs, layer(inputs))
    model.set_weights([np.random.default_rng(3).normal(size=w.shape).astype("float32") * 0.5 + 0.1
                       for w in model.get_weights()])  # non-zero biases, or Grappler deletes the BiasAdd
    capfd.readouterr()
    model.predict(np.ones((2, 8, 8, 8), "float32"), verbose=0)
    err = capfd.readouterr().err
    assert "remapper failed" not in err and "empty op name" not in err, err[-2000:]
