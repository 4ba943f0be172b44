"""Inference-only forms of CMT's layers, with every BatchNorm and LayerNorm affine folded into a convolution.

`keras_cmt.fuse_for_inference` fills these from a trained model. They compute the same function as the training
layers (to float rounding) with fewer, larger ops: the LPU and IRFFN residuals become the centre tap of their
depthwise kernels, LayerNorm's scale and shift move into the projections that read them, the attention scale into
q, and a BatchNorm y = a * x + c that sits between GELU and a zero-padded convolution becomes a per-channel shift
of the convolution's input by c / a and a kernel scaled by a: conv(pad0(a * x + c)) = conv_{a*W}(pad0(x + c / a)),
exact at the borders too, where the padding is. What is left per block is: depthwise conv,
LayerNorm without affine, three or four 1x1 convolutions, two matrix products and a softmax, LayerNorm, two 1x1
convolutions around a depthwise conv and two GELUs.

Where it costs fewer multiply-adds, the query and output projections move onto the keys and values (the
key-side form of `keras_cmt.layers.lightweight_attention`); the fused block stores them per head, with the LayerNorm
affine and the attention scale folded in.
"""

import keras
from keras import ops

from keras_cmt.layers.lightweight_attention import heads_last, key_side_attention, multi_head_attention
from keras_cmt.layers.pointwise_conv import pointwise_conv


@keras.saving.register_keras_serializable(package="keras_cmt")
class HeadsLastBias(keras.layers.Layer):
    """Reorders a stage's (1, heads, N, M) position bias to (1, N, heads * M), once for all its blocks."""

    def call(self, inputs):
        return heads_last(inputs)

    def compute_output_shape(self, input_shape):
        return (1, input_shape[2], input_shape[1] * input_shape[3])


def _layer_norm(x, epsilon):
    mean = ops.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)
    return centred * ops.rsqrt(variance + epsilon)


@keras.saving.register_keras_serializable(package="keras_cmt")
class ChannelShift(keras.layers.Layer):
    """Adds a fixed per-channel shift: the folded BatchNorm ahead of a zero-padded convolution."""

    def build(self, input_shape):
        self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros", trainable=False)

    def call(self, inputs):
        return inputs + ops.cast(self.shift, inputs.dtype)


@keras.saving.register_keras_serializable(package="keras_cmt")
class FusedCMTBlock(keras.layers.Layer):
    """A CMT block with folded normalisations; called as `block(x, relative_position_bias)` like `CMTBlock`.

    With `key_side_projections` the attention runs in the key-side form (`key_side_attention`) and the bias it is
    called with is the stage's `HeadsLastBias` output.
    """

    def __init__(self, dim, num_heads, hidden_dim, sr_ratio=1, ln_epsilon=1e-6, key_side_projections=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.key_side_projections = bool(key_side_projections)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.sr_ratio = int(sr_ratio)
        self.ln_epsilon = float(ln_epsilon)

    def build(self, inputs_shape, relative_position_bias_shape=None):
        c, h = self.dim, self.hidden_dim

        def weight(name, shape):
            return self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)

        self.lpu_kernel = weight("lpu_kernel", (3, 3, c, 1))
        self.lpu_bias = weight("lpu_bias", (c,))
        if self.key_side_projections:
            d = c // self.num_heads
            self.query_heads = weight("query_heads", (self.num_heads, d, c))
            self.key_bias_kernel = weight("key_bias_kernel", (c, self.num_heads))
            self.out_heads = weight("out_heads", (self.num_heads, d, c))
        else:
            self.q_kernel = weight("q_kernel", (1, 1, c, c))
            self.q_bias = weight("q_bias", (c,))
        if self.sr_ratio > 1:
            self.sr_kernel = weight("sr_kernel", (self.sr_ratio, self.sr_ratio, c, 1))
            self.sr_bias = weight("sr_bias", (c,))
        self.k_kernel = weight("k_kernel", (1, 1, c, c))
        self.k_bias = weight("k_bias", (c,))
        self.v_kernel = weight("v_kernel", (1, 1, c, c))
        self.v_bias = weight("v_bias", (c,))
        if not self.key_side_projections:  # created in this order so earlier saved fused models still load
            self.proj_kernel = weight("proj_kernel", (1, 1, c, c))
        self.proj_bias = weight("proj_bias", (c,))
        self.fc1_kernel = weight("fc1_kernel", (1, 1, c, h))
        self.fc1_bias = weight("fc1_bias", (h,))
        self.dw_shift = weight("dw_shift", (h,))
        self.dw_kernel = weight("dw_kernel", (3, 3, h, 1))
        self.dw_bias = weight("dw_bias", (h,))
        self.fc2_kernel = weight("fc2_kernel", (1, 1, h, c))
        self.fc2_bias = weight("fc2_bias", (c,))

    def call(self, inputs, relative_position_bias):
        x = ops.depthwise_conv(inputs, self.lpu_kernel, padding="same") + self.lpu_bias
        normed = _layer_norm(x, self.ln_epsilon)
        source = normed
        if self.sr_ratio > 1:
            source = ops.depthwise_conv(normed, self.sr_kernel, strides=self.sr_ratio, padding="valid") + self.sr_bias
        k = pointwise_conv(source, self.k_kernel, self.k_bias)
        v = pointwise_conv(source, self.v_kernel, self.v_bias)
        if self.key_side_projections:
            x = x + key_side_attention(normed, k, v, self.query_heads, self.key_bias_kernel, self.out_heads,
                                       self.proj_bias, relative_position_bias, self.num_heads)
        else:
            out = multi_head_attention(pointwise_conv(normed, self.q_kernel, self.q_bias), k, v, relative_position_bias,
                                       self.num_heads)
            x = x + pointwise_conv(out, self.proj_kernel, self.proj_bias)

        hidden = pointwise_conv(_layer_norm(x, self.ln_epsilon), self.fc1_kernel, self.fc1_bias, gelu=True)
        hidden = ops.depthwise_conv(hidden + self.dw_shift, self.dw_kernel, padding="same") + self.dw_bias
        hidden = keras.activations.gelu(hidden, approximate=False)
        return x + pointwise_conv(hidden, self.fc2_kernel, self.fc2_bias)

    def compute_output_shape(self, inputs_shape, relative_position_bias_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "sr_ratio": self.sr_ratio,
            "ln_epsilon": self.ln_epsilon,
            "key_side_projections": self.key_side_projections,
        }
