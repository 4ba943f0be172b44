"""Weights that look trained, for timing: non-zero biases and BatchNorm statistics.

A freshly built CMT has every bias, LayerNorm beta and BatchNorm mean at exactly zero. TensorFlow's Grappler folds
`x + 0` away, and with it the MatMul+BiasAdd(+GELU) patterns that oneDNN fuses, so a benchmark of an initialised
model times a different graph from the one pretrained or fine-tuned weights give (CMT-S batch 1: 91 ms with zero
biases, 105 ms with these, for the same code). Timing runs therefore use these weights.
"""

import numpy as np


def randomize_like_trained(model, seed=0):
    """Gives every zero-initialised vector of `model` small random values, in place; returns `model`."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        path = weight.path
        shape = tuple(weight.shape)
        if "moving_variance" in path:
            value = rng.uniform(0.5, 1.5, shape)
        elif "gamma" in path:
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif any(key in path for key in ("bias", "beta", "moving_mean")):
            value = 0.05 * rng.normal(size=shape)
        else:
            continue
        weight.assign(value.astype("float32"))
    return model
