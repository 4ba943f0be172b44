"""What the parts' checkpoint mappings share: PyTorch's tensor layouts and the entries of stock layers.

Each part of the paper lists its own official keys (`checkpoint_entries(prefix)` on `LocalPerceptionUnit`,
`LightweightAttention`, `InvertedResidualFFN`, `CMTBlock`, `PatchEmbedding`), beside its computation and its
serving fold; `keras_cmt.checkpoint_mapping` walks the model. An entry is (official key, Keras variable, layout
transform). PyTorch stores convolutions as (O, I, kh, kw), depthwise convolutions as (C, 1, kh, kw) and linear
layers as (O, I); Keras wants (kh, kw, I, O), (kh, kw, C, 1) and (I, O). q/k/v/proj are nn.Linear upstream and
1x1 Conv2D here (the same numbers, a 4-D-friendly form).
"""

import numpy as np


def conv(w):
    if w.ndim == 2:  # nn.Linear used as a 1x1 convolution
        w = w[:, :, None, None]
    return np.transpose(w, (2, 3, 1, 0))


def depthwise(w):
    return np.transpose(w, (2, 3, 0, 1))


def dense(w):
    return np.transpose(w)


def same(w):
    return w


def conv_entries(layer, prefix, kernel_transform=conv):
    entries = [(f"{prefix}.weight", layer.kernel, kernel_transform)]
    if layer.use_bias:
        entries.append((f"{prefix}.bias", layer.bias, same))
    return entries


def batch_norm_entries(layer, prefix):
    return [
        (f"{prefix}.weight", layer.gamma, same),
        (f"{prefix}.bias", layer.beta, same),
        (f"{prefix}.running_mean", layer.moving_mean, same),
        (f"{prefix}.running_var", layer.moving_variance, same),
    ]


def layer_norm_entries(layer, prefix):
    return [(f"{prefix}.weight", layer.gamma, same), (f"{prefix}.bias", layer.beta, same)]
