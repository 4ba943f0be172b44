"""Quantization modes of the converter and how each one configures `tf.lite.TFLiteConverter`.

- none:    float32 weights and activations.
- float16: float16 weights (half the file), and the model marked for fp16 inference (the flatbuffer metadata
           entry "reduced_precision_support" = "fp16accfp16", `mark_fp16_inference`): XNNPACK then computes in
           fp16 on CPUs with native fp16 arithmetic (ARMv8.2-A FP16: phones since about 2018) and in fp32
           elsewhere (weights dequantized at load); the GPU delegates compute in fp16 by default anyway.
- dynamic: int8 weights of the convolutions and fully-connected layers, float activations that XNNPACK
           quantizes per image at run time (dynamic-range quantization). The fastest mode on CPUs:
           XNNPACK runs these layers as int8 GEMMs (VNNI/dot-product kernels) with float everything else,
           all in one partition. The weights are quantized here (`quantize_weights_for_xnnpack`) rather
           than by the converter's dynamic-range pass, which also quantizes DEPTHWISE_CONV_2D weights:
           XNNPACK has no hybrid depthwise kernel, so those nodes fell back to TFLite's own kernels
           (CMT-S: 69 nodes in 70 partitions, slower than fp32 with 2 threads).
- int8:    integer quantization calibrated on representative images, float32 input/output by default.
           `int8_ops="xnnpack"` (default) quantizes every op that XNNPACK runs in int8 (convolutions,
           fully-connected, depthwise, add/mul, mean, reshape/transpose, ...) and keeps in float the ops
           it has no int8 kernel for (GELU, SOFTMAX, BATCH_MATMUL of two activations, and LayerNorm's
           SQUARED_DIFFERENCE / RSQRT / eps-ADD): the model stays in one XNNPACK partition. Full-integer
           TFLITE_BUILTINS_INT8 (`int8_ops="all"`, needed for int8/uint8 I/O and integer-only
           accelerators) leaves those ops to TFLite's slow reference kernels, in over a hundred
           partitions, and runs slower than fp32 with XNNPACK (see tflite/README.md).
"""

from __future__ import annotations

import numpy as np

MODES = ("none", "float16", "dynamic", "int8")
IO_TYPES = ("float32", "int8", "uint8")
INT8_OPS = ("xnnpack", "all")
# Op types XNNPACK has no signed-8-bit kernel for (LiteRT 2.3): kept float by int8_ops="xnnpack".
XNNPACK_FLOAT_ONLY_OPS = ("GELU", "SOFTMAX", "BATCH_MATMUL", "SQUARED_DIFFERENCE", "RSQRT")


def check_mode(mode: str, io_type: str = "float32", has_representative_data: bool = False) -> None:
    """Raises a one-line ValueError for an unknown mode/io type or int8 without calibration data."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}: expected one of {', '.join(MODES)}")
    if io_type not in IO_TYPES:
        raise ValueError(f"unknown input/output type {io_type!r}: expected one of {', '.join(IO_TYPES)}")
    if mode == "int8" and not has_representative_data:
        raise ValueError(
            "int8 quantization needs representative data to calibrate: pass --representative_data "
            "(e.g. 'digits', a folder of images or a tfds dataset name)"
        )
    if io_type != "float32" and mode != "int8":
        raise ValueError(f"--io_type {io_type} needs --quantize int8 (got {mode!r})")


def check_int8_ops(int8_ops: str, io_type: str) -> None:
    if int8_ops not in INT8_OPS:
        raise ValueError(f"unknown --int8_ops {int8_ops!r}: expected one of {', '.join(INT8_OPS)}")
    if int8_ops == "xnnpack" and io_type != "float32":
        raise ValueError(f"--io_type {io_type} needs full-integer quantization: add --int8_ops all")


def configure(converter, mode: str, representative_images=None, io_type: str = "float32") -> None:
    """Sets the converter's optimisation flags for `mode` (see the module docstring). `dynamic` converts in
    float32 here; `quantize_weights_for_xnnpack` then quantizes the converted file."""
    import tensorflow as tf

    check_mode(mode, io_type, representative_images is not None and len(representative_images) > 0)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode in ("none", "dynamic"):
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
        # The XNNPACK delegate README's "FP16 inference" route: with fp16 accumulation declared, the converter
        # writes "reduced_precision_support" = "fp16accfp16" (without it, "fp16accfp32", which XNNPACK ignores).
        # `mark_fp16_inference` checks the result and writes the entry itself if a converter does not.
        converter.target_spec._experimental_supported_accumulation_type = tf.float16
    elif mode == "int8":
        images = np.asarray(representative_images, dtype=np.float32)

        def representative_dataset():
            for image in images:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type != "float32":
            converter.inference_input_type = getattr(tf, io_type)
            converter.inference_output_type = getattr(tf, io_type)


# The model-level flatbuffer metadata entry that marks a model for reduced-precision inference, as TensorFlow Lite
# defines it in tensorflow/lite/tools/optimize/reduced_precision_support.h (also
# tensorflow/compiler/mlir/lite/tools/optimize/reduced_precision_metadata.h):
#     static constexpr char kTfLiteReducedPrecisionKey[] = "reduced_precision_support";
#     static constexpr char kTfLiteFloat16String[] = "fp16";  ... kTfLiteAccumulationString[] = "acc";
#     // A valid string is: >= 1 valid inference types + accumulation token + 1 valid accumulation type.
#     // Valid examples would be: "fp16accfp16", "bf16accfp32"
# The value is raw ASCII in the buffer that `Model.metadata[i].buffer` points to (no terminator). The XNNPACK
# delegate (tflite/delegates/xnnpack/xnnpack_delegate.cc, LiteRT) reads it and asks XNNPACK for fp16 only when
# the model allows fp16 inference *and* fp16 accumulation:
#     if (optimize::SupportsFP16Inference(precision_mask) &&
#         optimize::SupportsFP16Accumulation(precision_mask)) {
#       flags |= XNN_FLAG_HINT_FP16_INFERENCE;
# and XNNPACK (src/subgraph.c, xnn_subgraph_optimize) acts on that hint only where fp16 arithmetic is native:
#     const bool try_native_fp16 =
#       (flags & XNN_FLAG_HINT_FP16_INFERENCE) && xnn_is_f16_supported_natively(hardware_config);
# (ARM NEON FP16 arithmetic, i.e. ARMv8.2-A FP16). So "fp16accfp32", which the converter writes for float16
# weights by default, never enables fp16, and x86 CPUs run a marked file in fp32. Forcing fp16 regardless
# (TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16, `keras_cmt.tflite.runner.CompiledModelRunner(force_fp16=True)`) also
# works on x86 CPUs with AVX2, where XNNPACK emulates fp16 (fp32 arithmetic, results rounded to fp16).
REDUCED_PRECISION_KEY = "reduced_precision_support"
FP16_INFERENCE_MARKER = "fp16accfp16"


def reduced_precision_support(model_bytes: bytes):
    """The value of the model's "reduced_precision_support" metadata entry (e.g. "fp16accfp16"), or None."""
    from keras_cmt.tflite.metadata import model_metadata_buffer

    value = model_metadata_buffer(model_bytes, REDUCED_PRECISION_KEY)
    return None if value is None else value.decode("ascii", "replace")


def mark_fp16_inference(model_bytes: bytes, value: str = FP16_INFERENCE_MARKER) -> bytes:
    """`model_bytes` with its "reduced_precision_support" metadata entry set to `value` (added or replaced).

    Apply it before `metadata.populate` (the TFLite Model Metadata's associated files are appended behind the
    flatbuffer, and re-serialising here would drop them). A model that already carries `value` is returned as is.
    """
    from keras_cmt.tflite.metadata import set_model_metadata_buffer

    if reduced_precision_support(model_bytes) == value:
        return bytes(model_bytes)
    return set_model_metadata_buffer(model_bytes, REDUCED_PRECISION_KEY, value.encode("ascii"))


def builtin_op_names(schema) -> dict:
    """{builtin operator code: name} of a flatc-generated TFLite schema module (e.g. 6 -> "DEPTHWISE_CONV_2D")."""
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


# Op types whose constant weights `quantize_weights_for_xnnpack` makes int8: XNNPACK runs them with int8 weights
# and float activations it quantizes itself (its "qd8" GEMMs). Its depthwise convolution has no such kernel.
WEIGHT_QUANTIZED_OPS = ("CONV_2D", "FULLY_CONNECTED")
# The converter's threshold: smaller weight tensors (CMT's 3-channel first convolution) gain nothing from int8.
MIN_QUANTIZED_ELEMENTS = 1024


def quantize_weights_for_xnnpack(
    model_bytes: bytes, op_types=WEIGHT_QUANTIZED_OPS, min_elements: int = MIN_QUANTIZED_ELEMENTS
) -> bytes:
    """Returns `model_bytes` with the float32 weights of `op_types` stored as int8, one scale per output channel.

    The form TFLite's converter writes for dynamic-range quantization (symmetric, zero point 0, scales along the
    output-channel axis 0 of CONV_2D's OHWI and FULLY_CONNECTED's (out, in) weights), so every runtime reads it,
    restricted to the op types XNNPACK runs as hybrid int8 layers. A weight tensor shared by several ops is
    quantized once; tensors below `min_elements` and anything not float32 stay as they are.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    codes = builtin_op_names(schema)
    op_names = [codes.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]
    for graph in model.subgraphs:
        quantized = set()
        for op in graph.operators:
            if op_names[op.opcodeIndex] not in op_types or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            index = op.inputs[1]
            tensor = graph.tensors[index]
            buffer = model.buffers[tensor.buffer]
            if index in quantized or tensor.type != schema.TensorType.FLOAT32 or buffer.data is None:
                continue
            weights = np.frombuffer(np.asarray(buffer.data, dtype=np.uint8).tobytes(), dtype=np.float32)
            if weights.size < min_elements or weights.size != int(np.prod(tensor.shape)):
                continue
            rows = weights.reshape(int(tensor.shape[0]), -1)
            scale = np.abs(rows).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero channel stays zero
            values = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8)
            buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
            tensor.type = schema.TensorType.INT8
            params = schema.QuantizationParametersT()
            params.scale = scale.tolist()
            params.zeroPoint = [0] * len(scale)
            params.quantizedDimension = 0
            tensor.quantization = params
            quantized.add(index)
            if op_names[op.opcodeIndex] == "FULLY_CONNECTED" and op.builtinOptions is not None:
                # As the converter sets it: per-row asymmetric input quantization for TFLite's own hybrid kernel.
                op.builtinOptions.asymmetricQuantizeInputs = True
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    return bytes(builder.Output())


def _op_name(model, op, codes) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    return codes.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")


def float_island_nodes(model_bytes: bytes) -> list:
    """Output-tensor names of the ADD nodes that add LayerNorm's epsilon before an RSQRT.

    ADD as an op type must stay int8 (residuals, biases), so these are denylisted node by node.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(model_bytes, 0)
    codes = builtin_op_names(schema)
    names = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        producer = {op.Outputs(j): op for op in ops for j in range(op.OutputsLength())}
        for op in ops:
            if _op_name(model, op, codes) != "RSQRT":
                continue
            source = producer.get(op.Inputs(0))
            if source is not None and _op_name(model, source, codes) == "ADD":
                names.append(graph.Tensors(source.Outputs(0)).Name().decode())
    return names


def quantize_int8_for_xnnpack(converter, representative_images, max_rounds: int = 4) -> bytes:
    """Integer quantization of every op XNNPACK runs in int8; the rest stays float (one partition).

    Uses TFLite's selective quantization (`tf.lite.experimental.QuantizationDebugger` with a denylist):
    the converter calibrates once, then the calibrated model is quantized with the denylisted op types
    and LayerNorm's epsilon ADD nodes left in float, with QUANTIZE/DEQUANTIZE at the boundaries; nodes
    that XNNPACK still declines are added to the denylist and the (cheap) quantization step repeated.
    """
    import tensorflow as tf

    images = np.asarray(representative_images, dtype=np.float32)

    def representative_dataset():
        for image in images:
            yield [image[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(XNNPACK_FLOAT_ONLY_OPS))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset, debug_options=options
    )
    options.denylisted_nodes = float_island_nodes(debugger.calibrated_model)
    model = debugger.get_nondebug_quantized_model()
    # XNNPACK also declines int8 nodes whose calibrated scales it cannot represent (e.g. an ADD of a
    # near-zero LayerNorm beta: input/output scale ratio below 2**-10). Those depend on the weights and
    # the calibration data, so ask the delegate itself and keep what it declined in float.
    from keras_cmt.tflite.runner import LiteRTModel

    for _ in range(max_rounds):
        declined = LiteRTModel(model, num_threads=1).delegation().default_kernel_outputs
        declined = [name for name in declined if name not in options.denylisted_nodes]
        if not declined:
            break
        options.denylisted_nodes = list(options.denylisted_nodes) + declined
        model = debugger.get_nondebug_quantized_model()
    return model
