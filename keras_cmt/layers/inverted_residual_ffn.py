"""CMT's inverted residual feed-forward network (IRFFN).

1x1 expand -> GELU -> BN, then a 3x3 depthwise convolution with a shortcut, DWConv(x) + x (the LPU's
computation, `LocalPerceptionUnit`) -> GELU -> BN, then 1x1 project -> BN (the official `Mlp`). The hidden width is
`int(dim * mlp_ratio)`, truncated as the official code does
(CMT-Ti: int(46 * 3.6) = 165, not 166). GELU is the exact (erf) one, as PyTorch's nn.GELU() (`exact_gelu`).
"""

import keras

from keras_cmt.layers import checkpoint_layout, folding, initializers
from keras_cmt.layers.data_format import channel_axis, standardize_data_format
from keras_cmt.layers.gelu import exact_gelu
from keras_cmt.layers.local_perception_unit import LocalPerceptionUnit


@keras.saving.register_keras_serializable(package="keras_cmt")
class InvertedResidualFFN(keras.layers.Layer):
    """`dim` channels in and out, `hidden_dim` in between."""

    def __init__(self, dim, hidden_dim, bn_epsilon=1e-5, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.hidden_dim = int(hidden_dim)
        self.bn_epsilon = float(bn_epsilon)
        self.data_format = standardize_data_format(data_format)
        policy, data_format = self.dtype_policy, self.data_format

        def pointwise(filters, name):
            return keras.layers.Conv2D(
                filters,
                1,
                data_format=data_format,
                kernel_initializer=initializers.conv_kernel(),
                name=name,
                dtype=policy,
            )

        def batch_norm(name):  # PyTorch's momentum 0.1 is Keras' 0.9
            return keras.layers.BatchNormalization(
                axis=channel_axis(data_format), momentum=0.9, epsilon=self.bn_epsilon, name=name, dtype=policy
            )

        self.conv1 = pointwise(self.hidden_dim, "conv1")
        self.norm1 = batch_norm("norm1")
        self.dwconv = LocalPerceptionUnit(self.hidden_dim, data_format=data_format, name="dwconv", dtype=policy)
        self.norm2 = batch_norm("norm2")
        self.conv2 = pointwise(self.dim, "conv2")
        self.norm3 = batch_norm("norm3")

    def build(self, input_shape):
        self.conv1.build(input_shape)
        hidden_shape = self.conv1.compute_output_shape(input_shape)
        for layer in (self.norm1, self.dwconv, self.norm2, self.conv2):
            layer.build(hidden_shape)
        self.norm3.build(input_shape)

    def call(self, inputs, training=None):
        x = self.norm1(exact_gelu(self.conv1(inputs)), training=training)
        x = self.norm2(exact_gelu(self.dwconv(x)), training=training)
        return self.norm3(self.conv2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def checkpoint_entries(self, prefix):
        """The official keys under `prefix` ("blocks_a.0.mlp"): conv1.0/.2, proj (the residual depthwise
        convolution) and proj_bn, conv2.0/.1."""
        layout = checkpoint_layout
        return [
            *layout.conv_entries(self.conv1, f"{prefix}.conv1.0"),
            *layout.batch_norm_entries(self.norm1, f"{prefix}.conv1.2"),
            *self.dwconv.checkpoint_entries(f"{prefix}.proj"),
            *layout.batch_norm_entries(self.norm2, f"{prefix}.proj_bn"),
            *layout.conv_entries(self.conv2, f"{prefix}.conv2.0"),
            *layout.batch_norm_entries(self.norm3, f"{prefix}.conv2.1"),
        ]

    def folded(self, input_scale, input_shift):
        """The serving form's weights, with the affine y = input_scale * x + input_shift ahead of the layer (the
        block's LayerNorm) folded in: fc1 (the expansion), the depthwise convolution (its shortcut on the centre
        tap, the BatchNorm before it as a kernel scale and a shift of its input `dw_shift`, exact at the zero
        padding), and fc2 (the projection, both BatchNorms around it folded in)."""
        w1, c1 = folding.linear(self.conv1)
        w = {"fc1_kernel": input_scale[:, None] * w1, "fc1_bias": input_shift @ w1 + c1}
        w["dw_shift"], a1 = folding.shift_and_scale(*folding.batch_norm_affine(self.norm1))
        dw_kernel, w["dw_bias"] = self.dwconv.folded()
        w["dw_kernel"] = dw_kernel * a1[None, None, :, None]
        a2, s2 = folding.batch_norm_affine(self.norm2)
        a3, s3 = folding.batch_norm_affine(self.norm3)
        w2, c2 = folding.linear(self.conv2)
        w["fc2_kernel"] = (a2[:, None] * w2) * a3[None, :]
        w["fc2_bias"] = (s2 @ w2 + c2) * a3 + s3
        return w

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "bn_epsilon": self.bn_epsilon,
            "data_format": self.data_format,
        }
