"""CMT's inverted residual feed-forward network (IRFFN).

1x1 expand (GELU, BN) -> 3x3 depthwise with a shortcut (GELU, BN) -> 1x1 project (BN). The hidden width is
`int(dim * mlp_ratio)`, truncated as the official code does (CMT-Ti: int(46 * 3.6) = 165, not 166).
"""

import keras

from keras_cmt.layers.batch_norm import CMTBatchNormalization
from keras_cmt.layers.pointwise_conv import PointwiseConv2D
from keras_cmt.layers.residual_depthwise_conv import ResidualDepthwiseConv2D


@keras.saving.register_keras_serializable(package="keras_cmt")
class InvertedResidualFFN(keras.layers.Layer):
    """NHWC in and out; `hidden_dim` is the expanded width."""

    def __init__(self, dim, hidden_dim, bn_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.hidden_dim = int(hidden_dim)
        self.bn_epsilon = float(bn_epsilon)
        policy = self.dtype_policy

        def batch_norm(name):
            return CMTBatchNormalization(epsilon=self.bn_epsilon, momentum=0.9, name=name, dtype=policy)

        self.conv1 = PointwiseConv2D(self.hidden_dim, 1, name="conv1", dtype=policy)
        self.norm1 = batch_norm("norm1")
        self.dwconv = ResidualDepthwiseConv2D(3, padding="same", name="dwconv", dtype=policy)  # x + dwconv(x)
        self.norm2 = batch_norm("norm2")
        self.conv2 = PointwiseConv2D(self.dim, 1, name="conv2", dtype=policy)
        self.norm3 = batch_norm("norm3")

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.conv1.build(input_shape)
        self.norm1.build(hidden_shape)
        self.dwconv.build(hidden_shape)
        self.norm2.build(hidden_shape)
        self.conv2.build(hidden_shape)
        self.norm3.build(tuple(input_shape[:-1]) + (self.dim,))

    def call(self, inputs, training=None):
        x = self.norm1(self.conv1(inputs), training=training, gelu_first=True)
        x = self.dwconv(x)
        x = self.norm2(x, training=training, gelu_first=True)
        return self.norm3(self.conv2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "bn_epsilon": self.bn_epsilon,
        }
