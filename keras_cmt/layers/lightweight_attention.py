"""CMT's lightweight multi-head self-attention (LMHSA).

Keys and values come from the feature map shrunk by a k x k stride-k depthwise convolution + BatchNorm, which cuts
the attention cost by k^2; a learned relative-position bias is added to the logits. Everything stays NHWC with
4-D tensors and 1x1 convolutions for the projections (the official nn.Linear layers), the forms that TensorFlow,
TFLite/XNNPACK and the GPU delegate handle without reshaping to 5-D or falling back.
"""

import keras
from keras import ops

from keras_cmt.layers.batch_norm import CMTBatchNormalization
from keras_cmt.layers.pointwise_conv import PointwiseConv2D


def multi_head_attention(q, k, v, relative_position_bias, num_heads):
    """softmax(q k^T + bias) v over heads, NHWC in and out.

    q: (B, H, W, C), projected and already scaled; k, v: (B, h, w, C), projected; the bias (1, heads, H*W, h*w).
    Shared by `LightweightAttention` and the fused inference block. The softmax runs in float32 (keeps
    mixed-precision training stable; a no-op cast in float32). With a single key (stage 4 of an input below 64
    pixels) the weights are exactly 1 and are returned as such, which also spares Keras' warning about a softmax
    over an axis of size 1.
    """
    height, width, dim = q.shape[1], q.shape[2], q.shape[3]
    if height is None or width is None:
        raise ValueError("CMT attention needs a static height and width (the bias size depends on them).")
    head_dim = dim // num_heads
    n_k = k.shape[1] * k.shape[2]
    q = ops.transpose(ops.reshape(q, (-1, height * width, num_heads, head_dim)), (0, 2, 1, 3))  # B, h, Nq, d
    k = ops.transpose(ops.reshape(k, (-1, n_k, num_heads, head_dim)), (0, 2, 3, 1))  # B, h, d, Nk: k^T already
    v = ops.transpose(ops.reshape(v, (-1, n_k, num_heads, head_dim)), (0, 2, 1, 3))  # B, h, Nk, d
    logits = ops.matmul(q, k) + ops.cast(relative_position_bias, q.dtype)
    if n_k == 1:
        attn = ops.ones_like(logits, dtype=v.dtype)
    else:
        attn = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
    out = ops.matmul(attn, v)  # B, heads, Nq, d
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, height, width, dim))


@keras.saving.register_keras_serializable(package="keras_cmt")
class LightweightAttention(keras.layers.Layer):
    """Called as `layer(x, relative_position_bias)` with x (B, H, W, C) and the bias (1, heads, H*W, Hk*Wk).

    Args:
        dim: channels C.
        num_heads: heads; C must divide by it.
        sr_ratio: spatial reduction of keys/values (1 = none).
        qkv_bias: whether q/k/v projections have a bias (True in every released CMT).
        bn_epsilon: epsilon of the reduction's BatchNorm (1e-5 as in PyTorch).
    """

    def __init__(self, dim, num_heads, sr_ratio=1, qkv_bias=True, bn_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.sr_ratio = int(sr_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.bn_epsilon = float(bn_epsilon)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        policy = self.dtype_policy

        def pointwise(name, use_bias):
            return PointwiseConv2D(self.dim, 1, use_bias=use_bias, name=name, dtype=policy)

        self.q = pointwise("q", self.qkv_bias)
        self.k = pointwise("k", self.qkv_bias)
        self.v = pointwise("v", self.qkv_bias)
        self.proj = pointwise("proj", True)
        if self.sr_ratio > 1:
            self.sr = keras.layers.DepthwiseConv2D(
                self.sr_ratio, strides=self.sr_ratio, padding="valid", name="sr", dtype=policy
            )
            self.sr_norm = CMTBatchNormalization(
                epsilon=self.bn_epsilon, momentum=0.9, name="sr_norm", dtype=policy
            )

    def build(self, inputs_shape, relative_position_bias_shape=None):
        input_shape = inputs_shape
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build(input_shape)
        if self.sr_ratio > 1:
            self.sr.build(input_shape)
            self.sr_norm.build(self.sr.compute_output_shape(input_shape))

    def call(self, inputs, relative_position_bias, training=None):
        source = inputs
        if self.sr_ratio > 1:
            source = self.sr_norm(self.sr(inputs), training=training)
        q = self.q(inputs) * ops.cast(self.scale, inputs.dtype)
        out = multi_head_attention(q, self.k(source), self.v(source), relative_position_bias, self.num_heads)
        return self.proj(out)

    def compute_output_shape(self, inputs_shape, relative_position_bias_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "sr_ratio": self.sr_ratio,
            "qkv_bias": self.qkv_bias,
            "bn_epsilon": self.bn_epsilon,
        }
