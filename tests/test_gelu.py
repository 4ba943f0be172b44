"""exact_gelu / ExactGELU: the erf GELU, with a closed-form training gradient equal to TensorFlow's."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt.layers import ExactGELU, exact_gelu


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-6), ("float16", 2e-3)])
def test_training_gradient_matches_autodiff(dtype, tolerance):
    x = tf.constant(np.linspace(-8, 8, 801).reshape(1, 1, 801, 1), dtype)
    weights = tf.constant(np.random.default_rng(0).normal(size=x.shape), dtype)
    grads = []
    for training in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = exact_gelu(x, training=training)
            loss = tf.reduce_sum(tf.cast(y * weights, "float32"))
        grads.append((y, tape.gradient(loss, x)))
    (y_closed, g_closed), (y_tf, g_tf) = grads
    # TensorFlow's own forward formula (float16 subnormals may round differently)
    np.testing.assert_allclose(np.asarray(y_closed, "float32"), np.asarray(y_tf, "float32"), atol=tolerance / 100)
    np.testing.assert_allclose(np.asarray(g_closed, "float32"), np.asarray(g_tf, "float32"), atol=tolerance)
    # and the derivative itself: Phi(x) + x phi(x)
    xs = np.linspace(-8, 8, 801)
    from scipy.special import ndtr

    expected = (ndtr(xs) + xs * np.exp(-0.5 * xs ** 2) / np.sqrt(2 * np.pi)) * np.asarray(weights, "float64").ravel()
    np.testing.assert_allclose(np.asarray(g_closed, "float64").ravel(), expected, atol=20 * tolerance)


def test_layer_is_exact_gelu_and_serializes():
    layer = ExactGELU(name="g")
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 4)).astype("float32")
    np.testing.assert_allclose(layer(x), keras.activations.gelu(x, approximate=False), atol=1e-7)
    inputs = keras.Input((3, 3, 4))
    model = keras.Model(inputs, ExactGELU()(inputs))
    clone = keras.Model.from_config(model.get_config())
    assert isinstance(clone.layers[-1], ExactGELU)
