"""benchmarks.trained_like_weights: timing runs see the graph trained weights give."""

import numpy as np

from conftest import build_micro


def test_randomize_like_trained_fills_every_zero_vector_and_keeps_kernels():
    from benchmarks.trained_like_weights import randomize_like_trained

    model = build_micro()
    kernels_before = {w.path: w.numpy().copy() for w in model.weights if "kernel" in w.path}
    assert any(not w.numpy().any() for w in model.weights)  # a fresh model has all-zero biases
    randomize_like_trained(model, seed=1)
    for weight in model.weights:
        value = weight.numpy()
        if weight.path in kernels_before:
            np.testing.assert_array_equal(value, kernels_before[weight.path])
        else:
            assert value.any(), f"{weight.path} is still all zero"
        if "moving_variance" in weight.path:
            assert (value > 0).all()
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    assert np.isfinite(model.predict(x, verbose=0)).all()
