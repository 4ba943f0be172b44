"""CMT's exact (erf) GELU, 0.5 x (1 + erf(x / sqrt(2))), as PyTorch's nn.GELU() computes it.

Written out in `keras.ops` instead of `keras.activations.gelu(x, approximate=False)`: on TensorFlow that is
`tf.nn.gelu`, 0.5 x erfc(-x / sqrt(2)), and ONNX has no Erfc, so a graph holding it (Keras' own
`model.export(format="onnx")`) is one onnxruntime refuses. This form is the one every consumer of the graph
recognises: TensorFlow's Grappler remapper (oneDNN) fuses MatMul + BiasAdd + this into one `_MklNativeFusedMatMul`,
the TFLite converter turns it into its GELU op, and onnxruntime fuses Div(sqrt 2), Erf, Add, Mul into its Gelu
kernel (it matches only the division, not a multiplication by 1 / sqrt(2)). The same code on every backend; keep
the order of the operations (`0.5 * x` first, then `* (1 + erf(...))`): the TFLite converter's pattern does not
match `x * (0.5 * (1 + erf(...)))`.
"""

import keras
from keras import ops

_SQRT_TWO = 1.4142135623730951


@keras.saving.register_keras_serializable(package="keras_cmt")
def exact_gelu(x):
    """The exact GELU of x, in x's dtype."""
    return 0.5 * x * (1.0 + ops.erf(x / _SQRT_TWO))
