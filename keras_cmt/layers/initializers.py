"""The official initialisation (`CMT._init_weights`), for training from scratch.

Convolutions: Kaiming normal in fan-out mode, where PyTorch counts a depthwise kernel's fan-out as channels x k x k
(Keras' VarianceScaling sees k x k x 1, hence the 1 / channels); linear layers (q, k, v, proj and the classifier):
truncated normal with std 0.02; biases zero, normalisation scales one (the Keras defaults). Loaded weights replace
all of it.
"""

import keras


def conv_kernel():
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def depthwise_kernel(channels):
    return keras.initializers.VarianceScaling(2.0 / channels, mode="fan_out", distribution="untruncated_normal")


def linear_kernel():
    return keras.initializers.TruncatedNormal(stddev=0.02)
