"""What the parts' serving folds share: their weights as float64 arrays, and the two identities they use.

Each part of the paper folds itself for inference (`LocalPerceptionUnit.folded`, `LightweightAttention.folded`,
`InvertedResidualFFN.folded`, `CMTBlock.serving_form`, as timm's blocks `reparameterize()`); folding in float64 and
casting once keeps the serving model within float32 rounding of the trained one.
"""

import keras
import numpy as np


def array(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def batch_norm_affine(layer):
    """A BatchNorm in inference as y = a * x + c."""
    a = array(layer.gamma) / np.sqrt(array(layer.moving_variance) + layer.epsilon)
    return a, array(layer.beta) - array(layer.moving_mean) * a


def conv_weights(conv):
    """A convolution's kernel and bias (zeros when it has none)."""
    kernel = array(conv.kernel)
    return kernel, array(conv.bias) if conv.use_bias else np.zeros(kernel.shape[-1])


def linear(conv):
    """A 1x1 convolution as a (C_in, C_out) matrix and its bias."""
    kernel, bias = conv_weights(conv)
    return kernel[0, 0], bias


def with_identity_tap(kernel):
    """Adds the residual `x + dwconv(x)` to a 3x3 depthwise kernel as +1 on its centre tap."""
    kernel = kernel.copy()
    kernel[1, 1, :, 0] += 1.0
    return kernel


def shift_and_scale(a, c):
    """For a BatchNorm y = a * x + c feeding a zero-padded convolution W: conv(pad0(y)) = conv_{W*a}(pad0(x + c/a)).

    A channel with a == 0 (gamma exactly 0) gets a tiny scale instead: its output c is then reproduced to float
    precision, the input term being negligible."""
    tiny = 1e-8
    a = np.where(np.abs(a) < tiny, np.where(a < 0, -tiny, tiny), a)
    return c / a, a
