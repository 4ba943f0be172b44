"""CMT's building blocks as serializable Keras layers."""

from keras_cmt.layers.batch_norm import CMTBatchNormalization
from keras_cmt.layers.cmt_block import CMTBlock
from keras_cmt.layers.drop_path import DropPath
from keras_cmt.layers.gelu import ExactGELU, exact_gelu
from keras_cmt.layers.inverted_residual_ffn import InvertedResidualFFN
from keras_cmt.layers.layer_norm import CMTLayerNormalization
from keras_cmt.layers.lightweight_attention import LightweightAttention
from keras_cmt.layers.local_perception_unit import LocalPerceptionUnit
from keras_cmt.layers.patch_embedding import PatchEmbedding
from keras_cmt.layers.pointwise_conv import PointwiseConv2D
from keras_cmt.layers.relative_position_bias import RelativePositionBias
from keras_cmt.layers.residual_depthwise_conv import ResidualDepthwiseConv2D

__all__ = [
    "CMTBatchNormalization", "CMTBlock", "CMTLayerNormalization", "DropPath", "ExactGELU", "InvertedResidualFFN",
    "LightweightAttention", "LocalPerceptionUnit", "PatchEmbedding", "PointwiseConv2D", "RelativePositionBias",
    "ResidualDepthwiseConv2D", "exact_gelu",
]
