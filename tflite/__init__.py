"""keras_cmt on phones: TFLite conversion with metadata, quantization, LiteRT benchmarks and ONNX export.

Modules: `convert` (CLI `python -m keras_cmt.tflite.convert`), `quantization`, `representative_data`, `metadata`
(TFLite Model Metadata writer), `runner` (LiteRT interpreter + XNNPACK delegation report),
`compatibility` (GPU Analyzer + XNNPACK checks), `benchmark` (`python -m keras_cmt.tflite.benchmark`) and
`export_onnx`. Importing the package loads neither TensorFlow nor LiteRT; see tflite/README.md.
"""
