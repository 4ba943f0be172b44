"""Training and evaluation of keras_cmt models with tf.distribute: `python -m keras_cmt.training.train`,
`python -m keras_cmt.training.evaluate`, `python -m keras_cmt.training.benchmark_digits`. See training/README.md."""
