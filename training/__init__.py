"""Training and evaluation of keras_cmt models with tf.distribute: `python -m training.train`,
`python -m training.evaluate`, `python -m training.benchmark_digits`. See training/README.md."""
