"""Fused C++ CPU kernels for training (BatchNorm with or without a preceding GELU, LayerNorm), built on first use."""

from keras_cmt.kernels.build import KernelBuildError, enabled, load
from keras_cmt.kernels.training_ops import batch_norm, layer_norm

__all__ = ["KernelBuildError", "batch_norm", "enabled", "layer_norm", "load"]
