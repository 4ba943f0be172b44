"""Training and evaluation of keras_cmt models with tf.distribute: `python -m keras_cmt.training.train`,
`python -m keras_cmt.training.evaluate`, `python -m keras_cmt.training.benchmark_digits`. See training/README.md."""

from keras_cmt import quiet as _quiet

# Every module here needs TensorFlow (tf.data, tf.io.gfile, tf.distribute). On the JAX and PyTorch backends Keras
# has not imported it yet, so it is imported here under keras_cmt's start-up filter, like Keras' own imports.
with _quiet.native_stderr_filtered():
    import tensorflow as _tensorflow  # noqa: F401
