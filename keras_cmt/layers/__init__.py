"""CMT's parts as serializable Keras layers: the same code on TensorFlow, JAX and PyTorch."""

from keras_cmt.layers.cmt_block import CMTBlock
from keras_cmt.layers.drop_path import DropPath
from keras_cmt.layers.gelu import exact_gelu
from keras_cmt.layers.inverted_residual_ffn import InvertedResidualFFN
from keras_cmt.layers.layer_norm import ChannelLayerNormalization, ChannelsFirstLayerNormalization
from keras_cmt.layers.lightweight_attention import LightweightAttention
from keras_cmt.layers.local_perception_unit import LocalPerceptionUnit
from keras_cmt.layers.patch_embedding import PatchEmbedding
from keras_cmt.layers.relative_position_bias import RelativePositionBias

__all__ = [
    "CMTBlock",
    "ChannelLayerNormalization",
    "ChannelsFirstLayerNormalization",
    "DropPath",
    "InvertedResidualFFN",
    "LightweightAttention",
    "LocalPerceptionUnit",
    "PatchEmbedding",
    "RelativePositionBias",
    "exact_gelu",
]
