"""Run a converted model with LiteRT (`ai-edge-litert`): its `Interpreter`, or its `CompiledModel` API.

`tf.lite.Interpreter` is deprecated in TensorFlow 2.21, so everything in this package that executes a
`.tflite` file goes through `ai-edge-litert`. `LiteRTModel` (the `Interpreter`, which LiteRT 2.x keeps for
backward compatibility) hides quantized I/O (int8/uint8 inputs are quantized, outputs dequantized) and tells which
nodes XNNPACK took. `CompiledModelRunner` is the runtime Android apps use now (`CompiledModel` on the CPU
accelerator); it is here because it hands XNNPACK's flags through, which can force fp16 inference (the
`Interpreter` has no delegate options and the wheel ships no XNNPACK delegate library to load).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np

from keras_cmt import quiet


def _interpreter_module():
    try:
        from ai_edge_litert import interpreter
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ai-edge-litert is not installed: pip install 'keras_cmt[tflite]'") from e
    return interpreter


@dataclasses.dataclass
class DelegationReport:
    """What the XNNPACK delegate took over, read from the interpreter's delegated execution plan.

    `partitions` is the number of delegate kernels in the plan; `default_kernel_ops` lists the original
    nodes that still run on TFLite's built-in CPU kernels (empty means the whole graph is delegated).
    """

    model_nodes: int
    partitions: int
    default_kernel_ops: list
    default_kernel_outputs: list = dataclasses.field(default_factory=list)

    @property
    def fully_delegated(self) -> bool:
        return self.partitions >= 1 and not self.default_kernel_ops

    def default_kernel_op_counts(self) -> dict:
        return dict(Counter(self.default_kernel_ops).most_common())

    def as_dict(self) -> dict:
        return {
            "model_nodes": self.model_nodes,
            "xnnpack_partitions": self.partitions,
            "nodes_on_default_kernels": len(self.default_kernel_ops),
            "default_kernel_ops": self.default_kernel_op_counts(),
        }


class _BatchOneModel:
    """`predict` for a batch-1 model: the runners define `input_shape`, `invoke_raw` and the I/O (de)quantization."""

    def predict(self, images) -> np.ndarray:
        """Runs a batch image by image through the batch-1 model; returns float32 outputs."""
        images = np.asarray(images, dtype=np.float32)
        expected = self.input_shape[1:]
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"input shape {images.shape} does not match the model's (N, {', '.join(map(str, expected))})"
            )
        outputs = []
        for image in images:
            y = self.invoke_raw(self._quantize_input(image[None]))
            outputs.append(self._dequantize_output(y)[0])
        return np.stack(outputs)


class LiteRTModel(_BatchOneModel):
    """A `.tflite` model loaded in the LiteRT interpreter, batch-1 signature, float in / float out.

    Args:
      model: path to a `.tflite` file or its bytes.
      num_threads: interpreter threads (XNNPACK uses the same pool).
      use_xnnpack: True applies LiteRT's default XNNPACK delegate; False runs TFLite's reference
        built-in kernels only (useful to separate delegate from model effects).
    """

    def __init__(self, model, num_threads: int = 2, use_xnnpack: bool = True):
        interp = _interpreter_module()
        resolver = (
            interp.OpResolverType.AUTO if use_xnnpack else interp.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        kwargs = dict(num_threads=num_threads, experimental_op_resolver_type=resolver)
        if isinstance(model, (bytes, bytearray)):
            source = dict(model_content=bytes(model))
        else:
            path = os.fspath(model)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"TFLite model not found: {path}")
            source = dict(model_path=path)
        with quiet.native_stderr_filtered():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" line
            self._interpreter = interp.Interpreter(**source, **kwargs)
            self._interpreter.allocate_tensors()
        self.input_details = self._interpreter.get_input_details()
        self.output_details = self._interpreter.get_output_details()
        if len(self.input_details) != 1:
            raise ValueError(f"expected a model with one input, got {len(self.input_details)}")
        self._input = self.input_details[0]
        self._output = self.output_details[0]

    @property
    def input_shape(self) -> tuple:
        return tuple(int(d) for d in self._input["shape"])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    @property
    def output_dtype(self):
        return self._output["dtype"]

    def _quantize_input(self, x: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32)
        scale, zero_point = self._input["quantization"]
        if scale == 0:
            raise ValueError("quantized input tensor without quantization parameters")
        info = np.iinfo(dtype)
        q = np.round(x / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if self._output["dtype"] == np.float32:
            return y.astype(np.float32)
        scale, zero_point = self._output["quantization"]
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        """One invoke with an input already in the model's input dtype and shape."""
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])

    def delegation(self) -> DelegationReport:
        """Walks the delegated execution plan back from the outputs.

        After XNNPACK is applied the interpreter lists the model's original nodes followed by one
        `DELEGATE` node per partition. A tensor produced by a delegate node came out of a partition;
        any other produced tensor comes from an original node that the delegate left to the default
        kernels. Walking from the outputs through producers therefore visits exactly the nodes of
        the execution plan.
        """
        nodes = self._interpreter._get_ops_details()
        delegate_nodes = [n for n in nodes if n["op_name"] == "DELEGATE"]
        model_nodes = [n for n in nodes if n["op_name"] != "DELEGATE"]
        by_delegate = {}
        for n in delegate_nodes:
            for t in n["outputs"]:
                by_delegate[int(t)] = n
        by_node = {}
        for n in model_nodes:
            for t in n["outputs"]:
                by_node.setdefault(int(t), n)
        stack = [int(d["index"]) for d in self.output_details]
        seen_tensors, seen_nodes = set(), set()
        default_ops, default_outputs, partitions = [], [], set()
        while stack:
            t = stack.pop()
            if t < 0 or t in seen_tensors:
                continue
            seen_tensors.add(t)
            node = by_delegate.get(t)
            if node is not None:
                partitions.add(node["index"])
            else:
                node = by_node.get(t)
                if node is None:
                    continue  # graph input or constant
                if node["index"] not in seen_nodes:
                    default_ops.append(node["op_name"])
                    default_outputs.append(self._interpreter._get_tensor_details(t, 0)["name"])
            if node["index"] in seen_nodes:
                continue
            seen_nodes.add(node["index"])
            stack.extend(int(i) for i in node["inputs"])
        # Nodes with no outputs (side effects only) are never delegated by XNNPACK.
        default_ops += [n["op_name"] for n in model_nodes if len(n["outputs"]) == 0]
        return DelegationReport(
            model_nodes=len(model_nodes),
            partitions=len(partitions),
            default_kernel_ops=default_ops,
            default_kernel_outputs=default_outputs,
        )


# TfLiteXNNPackDelegateOptions.flags bits (tflite/delegates/xnnpack/xnnpack_delegate.h):
#     #define TFLITE_XNNPACK_DELEGATE_FLAG_QS8 0x00000001
#     #define TFLITE_XNNPACK_DELEGATE_FLAG_QU8 0x00000002
#     #define TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16 0x00000004
XNNPACK_FLAG_QS8 = 0x1
XNNPACK_FLAG_QU8 = 0x2
XNNPACK_FLAG_FORCE_FP16 = 0x4


class CompiledModelRunner(_BatchOneModel):
    """A `.tflite` model compiled by LiteRT's `CompiledModel` API on its CPU accelerator (XNNPACK).

    The runtime Android apps use (`com.google.ai.edge.litert.CompiledModel`), here through the Python API of the
    same `ai-edge-litert` wheel. Unlike `Interpreter`, it passes XNNPACK's delegate flags through
    (`CpuOptions.xnnpack_flags`, which replace the delegate's defaults), so `force_fp16=True` sets
    TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16: every float operator runs in fp16, natively on ARMv8.2-FP16 CPUs and
    emulated on x86 CPUs with AVX2 (fp32 arithmetic, every result rounded to fp16); XNNPACK refuses the model
    where neither is available. Float32 input and output only (the fp16 question does not arise for int8 I/O).

    Args:
      model: path to a `.tflite` file or its bytes.
      num_threads: XNNPACK threads.
      force_fp16: run every float operator in fp16 regardless of the model's reduced-precision marker.
    """

    def __init__(self, model, num_threads: int = 2, force_fp16: bool = False):
        try:
            from ai_edge_litert import compiled_model as cm
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise ImportError("ai-edge-litert is not installed: pip install 'keras_cmt[tflite]'") from e
        if isinstance(model, (bytes, bytearray)):
            self._data = bytes(model)
        else:
            path = os.fspath(model)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"TFLite model not found: {path}")
            with open(path, "rb") as f:
                self._data = f.read()
        self.force_fp16 = bool(force_fp16)
        flags = (XNNPACK_FLAG_QS8 | XNNPACK_FLAG_QU8 | XNNPACK_FLAG_FORCE_FP16) if force_fp16 else None
        options = cm.Options(
            hardware_accelerators=cm.HardwareAccelerator.CPU,
            cpu_options=cm.CpuOptions(num_threads=num_threads, xnnpack_flags=flags),
        )
        try:
            with quiet.native_stderr_filtered():
                self._model = cm.CompiledModel.from_buffer(self._data, options=options)
        except Exception as e:
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise RuntimeError(
                f"LiteRT could not compile the model{' with fp16 forced' if force_fp16 else ''}: {detail}"
            ) from e
        signature = next(iter(self._model.get_signature_list()))
        inputs = list(self._model.get_input_tensor_details(signature).values())
        outputs = list(self._model.get_output_tensor_details(signature).values())
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, got {len(inputs)}")
        if inputs[0]["dtype"] != "float32" or outputs[0]["dtype"] != "float32":
            raise ValueError("CompiledModelRunner runs float32-input, float32-output models only")
        self._input, self._output = inputs[0], outputs[0]
        self._output_size = int(np.prod(self._output["shape"]))
        self._input_buffers = self._model.create_input_buffers(0)
        self._output_buffers = self._model.create_output_buffers(0)

    @property
    def input_shape(self) -> tuple:
        return tuple(int(d) for d in self._input["shape"])

    @property
    def input_dtype(self):
        return np.float32

    @property
    def output_dtype(self):
        return np.float32

    def is_fully_accelerated(self) -> bool:
        """LiteRT's own answer: whether the accelerator (XNNPACK here) took every op."""
        return self._model.is_fully_accelerated()

    def _quantize_input(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        """One run with a float32 input of the model's shape; the output with its batch dimension."""
        self._input_buffers[0].write(np.ascontiguousarray(x, dtype=np.float32))
        self._model.run_by_index(0, self._input_buffers, self._output_buffers)
        return self._output_buffers[0].read(self._output_size, np.float32).reshape(self._output["shape"])

    def _dequantize_output(self, y: np.ndarray) -> np.ndarray:
        return y


def fp16_rounded(values: np.ndarray) -> bool:
    """Whether every value is exactly a float16 number: the outputs of a graph XNNPACK really ran in fp16
    (its last operator writes fp16, converted to fp32 at the output), which an fp32 graph's are not."""
    values = np.asarray(values, dtype=np.float32)
    return bool(np.array_equal(values, values.astype(np.float16).astype(np.float32)))
