"""Training-mode BatchNorm (optionally after an exact GELU) and LayerNorm on the fused CPU kernels, with gradients.

Each returns None when the kernels do not apply, and the caller takes its TensorFlow-op path: another backend,
a dtype other than float32 (mixed precision), a machine with a GPU or TPU (the kernels are CPU-only, and placing
them there would copy every activation to the host), a function XLA compiles (`jit_compile`), or kernels that
could not be built (`build.py`). Results
match the TensorFlow-op path to float32 rounding (tests/test_kernels.py); the speed-up is in benchmarks/RESULTS.md.
The gradient ops have no gradient of their own: for second-order derivatives (gradient penalties, Hessian-vector
products) set KERAS_CMT_CPU_KERNELS=0. With a ParameterServerStrategy, workers import keras_cmt (which loads the
library) before they run a step.
"""

import functools

import keras


@functools.lru_cache(maxsize=None)
def _accelerator_visible():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _in_xla_function():
    """True while tracing a jit_compile function (e.g. `--jit_compile`): XLA cannot compile a custom op."""
    import tensorflow as tf

    try:  # TensorFlow's own test for it; private, so if it moves the kernels are skipped rather than break XLA
        from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
    except ImportError:
        return True
    return GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _library(x):
    if (keras.backend.backend() != "tensorflow" or x.dtype != "float32" or _accelerator_visible()
            or _in_xla_function()):
        return None
    from keras_cmt.kernels.build import enabled, load

    return load() if enabled() else None


def batch_norm(x, gamma, beta, epsilon, gelu=False):
    """(y, batch mean, batch variance) of BatchNorm(GELU(x) if gelu else x) over all axes but the last; or None."""
    lib = _library(x)
    if lib is None:
        return None
    import tensorflow as tf

    epsilon = float(epsilon)

    @tf.custom_gradient
    def forward(x, gamma, beta):
        y, mean, variance = lib.keras_cmt_batch_norm(x, gamma, beta, epsilon=epsilon, gelu=gelu)

        def grad(dy, _dmean, _dvariance):  # the statistics only feed the moving averages
            return lib.keras_cmt_batch_norm_grad(dy, x, gamma, mean, variance, epsilon=epsilon, gelu=gelu)

        return (y, mean, variance), grad

    return forward(x, gamma, beta)


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis; or None."""
    lib = _library(x)
    if lib is None:
        return None
    import tensorflow as tf

    epsilon = float(epsilon)

    @tf.custom_gradient
    def forward(x, gamma, beta):
        y, mean, inv_std = lib.keras_cmt_layer_norm(x, gamma, beta, epsilon=epsilon)

        def grad(dy):
            return lib.keras_cmt_layer_norm_grad(dy, x, gamma, mean, inv_std)

        return y, grad

    return forward(x, gamma, beta)
