"""CMT's lightweight multi-head self-attention (LMHSA).

Queries come from every position; keys and values from the feature map shrunk by a k x k stride-k depthwise
convolution + BatchNorm, which cuts the attention cost by k^2. A learned relative-position bias (one per stage,
`RelativePositionBias`) is added to the scaled logits:

    LMHSA(x) = proj(softmax(q k^T / sqrt(d) + B) v),  q = x Wq,  k = x' Wk,  v = x' Wv,  x' = BN(DWConv_k(x)).

The projections are the official nn.Linear layers as 1x1 convolutions, so the layer stays a feature map in either
data format and its variables are the same in both.
"""

import keras
import numpy as np
from keras import ops

from keras_cmt.layers import checkpoint_layout, folding, initializers
from keras_cmt.layers.data_format import channel_axis, spatial_size, standardize_data_format


@keras.saving.register_keras_serializable(package="keras_cmt")
class LightweightAttention(keras.layers.Layer):
    """Called as `layer(x, relative_position_bias)`, x a feature map and the bias (1, heads, H*W, H*W / sr^2).

    Args:
        dim: channels C.
        num_heads: heads; C must divide by it.
        sr_ratio: spatial reduction of keys/values (1 = none).
        qkv_bias: whether the q/k/v projections have a bias (True in every released CMT).
        bn_epsilon: epsilon of the reduction's BatchNorm (1e-5 as in PyTorch).
        data_format: "channels_last" or "channels_first" (default: Keras' image data format).
    """

    def __init__(self, dim, num_heads, sr_ratio=1, qkv_bias=True, bn_epsilon=1e-5, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.sr_ratio = int(sr_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.bn_epsilon = float(bn_epsilon)
        self.data_format = standardize_data_format(data_format)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim**-0.5
        policy = self.dtype_policy

        def projection(name, use_bias):
            return keras.layers.Conv2D(
                self.dim,
                1,
                use_bias=use_bias,
                data_format=self.data_format,
                kernel_initializer=initializers.linear_kernel(),
                name=name,
                dtype=policy,
            )

        self.q = projection("q", self.qkv_bias)
        self.k = projection("k", self.qkv_bias)
        self.v = projection("v", self.qkv_bias)
        self.proj = projection("proj", True)
        if self.sr_ratio > 1:
            self.sr = keras.layers.DepthwiseConv2D(
                self.sr_ratio,
                strides=self.sr_ratio,
                padding="valid",
                data_format=self.data_format,
                depthwise_initializer=initializers.depthwise_kernel(self.dim),
                name="sr",
                dtype=policy,
            )
            self.sr_norm = keras.layers.BatchNormalization(
                axis=channel_axis(self.data_format), momentum=0.9, epsilon=self.bn_epsilon, name="sr_norm", dtype=policy
            )

    def build(self, inputs_shape, relative_position_bias_shape=None):
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build(inputs_shape)
        if self.sr_ratio > 1:
            self.sr.build(inputs_shape)
            self.sr_norm.build(self.sr.compute_output_shape(inputs_shape))

    def _split_heads(self, x):
        """Feature map -> (batch, heads, positions, head_dim)."""
        height, width = spatial_size(x, self.data_format)
        if self.data_format == "channels_last":
            x = ops.reshape(x, (-1, height * width, self.num_heads, self.head_dim))
            return ops.transpose(x, (0, 2, 1, 3))
        x = ops.reshape(x, (-1, self.num_heads, self.head_dim, height * width))
        return ops.transpose(x, (0, 1, 3, 2))

    def _merge_heads(self, x, height, width):
        """(batch, heads, positions, head_dim) -> feature map."""
        if self.data_format == "channels_last":
            return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, height, width, self.dim))
        return ops.reshape(ops.transpose(x, (0, 1, 3, 2)), (-1, self.dim, height, width))

    def call(self, inputs, relative_position_bias, training=None):
        height, width = spatial_size(inputs, self.data_format)
        reduced = self.sr_norm(self.sr(inputs), training=training) if self.sr_ratio > 1 else inputs
        q = self._split_heads(self.q(inputs))
        k = self._split_heads(self.k(reduced))
        v = self._split_heads(self.v(reduced))
        logits = ops.matmul(q, ops.swapaxes(k, -1, -2)) * self.scale + ops.cast(relative_position_bias, q.dtype)
        if k.shape[2] == 1:  # one key (a 32-pixel input): the weights are 1, without Keras' size-1 softmax warning
            attn = ops.ones_like(logits)
        else:  # in float32, which keeps mixed-precision training stable (a no-op in float32)
            attn = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
        return self.proj(self._merge_heads(ops.matmul(attn, v), height, width))

    def checkpoint_entries(self, prefix):
        """The official keys under `prefix` ("blocks_a.0.attn"): q, k, v, proj (nn.Linear), the reduction sr.0 and
        its BatchNorm sr.1."""
        entries = []
        for name in ("q", "k", "v", "proj"):
            entries += checkpoint_layout.conv_entries(getattr(self, name), f"{prefix}.{name}")
        if self.sr_ratio > 1:
            entries += checkpoint_layout.conv_entries(self.sr, f"{prefix}.sr.0", checkpoint_layout.depthwise)
            entries += checkpoint_layout.batch_norm_entries(self.sr_norm, f"{prefix}.sr.1")
        return entries

    def folded(self, input_scale, input_shift, key_side=False):
        """The serving form's weights, with the affine y = input_scale * x + input_shift ahead of the layer (the
        block's LayerNorm) folded into the query projection (with the 1/sqrt(d) scale) and into the key/value
        side: the reduction convolution and its BatchNorm where there is one, else the key and value projections.
        With `key_side`, the query and output projections in the per-head layout of the key-side form
        (`keras_cmt.fused_layers.key_side_weights`)."""
        wq, bq = folding.linear(self.q)
        wq, bq = input_scale[:, None] * wq * self.scale, (input_shift @ wq + bq) * self.scale
        wp, bp = folding.linear(self.proj)
        w = {"proj_bias": bp}
        if key_side:
            from keras_cmt.fused_layers import key_side_weights

            w["query_heads"], w["key_bias_kernel"], w["out_heads"] = (
                np.asarray(t) for t in key_side_weights(wq, bq, wp, self.num_heads)
            )
        else:
            w["q_kernel"], w["q_bias"], w["proj_kernel"] = wq, bq, wp
        wk, bk = folding.linear(self.k)
        wv, bv = folding.linear(self.v)
        if self.sr_ratio > 1:  # the affine goes into the reduction, the reduction's BatchNorm after it
            k_sr, b_sr = folding.conv_weights(self.sr)
            a_s, c_s = folding.batch_norm_affine(self.sr_norm)
            w["sr_kernel"] = k_sr * (input_scale * a_s)[None, None, :, None]
            w["sr_bias"] = a_s * (b_sr + input_shift * k_sr.sum(axis=(0, 1))[:, 0]) + c_s
            w["k_kernel"], w["k_bias"], w["v_kernel"], w["v_bias"] = wk, bk, wv, bv
        else:
            w["k_kernel"], w["k_bias"] = input_scale[:, None] * wk, input_shift @ wk + bk
            w["v_kernel"], w["v_bias"] = input_scale[:, None] * wv, input_shift @ wv + bv
        return w

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
            "data_format": self.data_format,
        }
