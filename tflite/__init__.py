"""keras_cmt on phones: TFLite conversion with metadata, quantization, LiteRT benchmarks and ONNX export.

Modules: `convert` (CLI `python -m keras_cmt.tflite.convert`), `quantization`, `representative_data`, `metadata`
(TFLite Model Metadata writer), `runner` (LiteRT `Interpreter` + XNNPACK delegation report; LiteRT
`CompiledModel` on the CPU, fp16 inference forced or not), `compatibility` (GPU Analyzer + XNNPACK checks),
`benchmark` (`python -m keras_cmt.tflite.benchmark`) and `export_onnx`. Importing the package loads neither TensorFlow
nor LiteRT; see tflite/README.md.
"""
