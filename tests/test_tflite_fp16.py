"""`--quantize float16` files are marked for XNNPACK's fp16 inference; LiteRT's CompiledModel can force fp16 here.

The marker is the flatbuffer `Model.metadata` entry "reduced_precision_support" = "fp16accfp16" (TensorFlow
Lite's tools/optimize/reduced_precision_support.h); the XNNPACK delegate computes in fp16 only with it, and only
on CPUs with native fp16 arithmetic (ARMv8.2-A FP16). This x86 machine therefore runs the marked file in fp32,
which keeps the float16 file's parity bound; forcing fp16 (XNNPACK's FORCE_FP16 flag through the CompiledModel
API) runs it in emulated fp16 where the CPU has AVX2.
"""

import numpy as np
import pytest

from conftest import build_micro
from keras_cmt.tflite import convert, metadata, quantization
from keras_cmt.tflite.runner import CompiledModelRunner, LiteRTModel, fp16_rounded


@pytest.fixture(scope="module")
def micro_logits_model(micro_checkpoint):
    return build_micro(weights=str(micro_checkpoint), classifier_activation=None)


@pytest.fixture(scope="module")
def float16_file(micro_logits_model):
    """The float16 file with its TFLite Model Metadata, input already normalised (as the fixture's)."""
    return convert.convert(micro_logits_model, quantize="float16", input_range="normalized")


def _flatbuffer_metadata(data: bytes) -> dict:
    """{name: raw bytes} of the model flatbuffer's `metadata` entries, read with the TFLite schema classes."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        entries[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return entries


def test_float16_file_carries_the_fp16_inference_marker(float16_file, micro_logits_model, micro_io):
    entries = _flatbuffer_metadata(float16_file)
    assert entries["reduced_precision_support"] == b"fp16accfp16"
    assert "TFLITE_METADATA" in entries  # the Model Metadata is still there beside it
    description = metadata.read_metadata(float16_file).description.decode()
    assert "fp16 inference" in description and "fp16accfp16" in description
    # The fp32 path of the same file (XNNPACK on this x86 CPU takes no fp16 hint) keeps the float16 bound.
    keras_logits = micro_logits_model.predict(micro_io["input_nhwc"], verbose=0)
    logits = LiteRTModel(float16_file).predict(micro_io["input_nhwc"])
    assert 0 < np.abs(logits - keras_logits).max() <= 1e-2
    assert not fp16_rounded(logits)


def test_only_float16_files_are_marked(micro_logits_model):
    for mode in ("none", "dynamic"):
        data = convert.convert(micro_logits_model, quantize=mode, with_metadata=False)
        assert "reduced_precision_support" not in _flatbuffer_metadata(data), mode
        assert b"fp16" not in metadata.read_metadata(convert.add_metadata(data, micro_logits_model)).description


def test_mark_fp16_inference_adds_or_replaces_the_entry_and_changes_nothing_else(micro_logits_model, micro_io):
    plain = convert.convert(micro_logits_model, input_range="normalized", with_metadata=False)
    assert quantization.reduced_precision_support(plain) is None
    marked = quantization.mark_fp16_inference(plain)
    assert _flatbuffer_metadata(marked)["reduced_precision_support"] == b"fp16accfp16"
    # An entry the converter wrote with fp32 accumulation (which XNNPACK ignores) is replaced, not duplicated.
    fp32_accumulation = quantization.mark_fp16_inference(plain, "fp16accfp32")
    remarked = quantization.mark_fp16_inference(fp32_accumulation)
    assert quantization.reduced_precision_support(remarked) == "fp16accfp16"
    assert list(_flatbuffer_metadata(remarked)).count("reduced_precision_support") == 1
    assert quantization.mark_fp16_inference(marked) == marked  # already marked: unchanged
    x = micro_io["input_nhwc"]
    np.testing.assert_array_equal(LiteRTModel(marked).predict(x), LiteRTModel(plain).predict(x))


def _compiled(data, **kwargs):
    try:
        return CompiledModelRunner(data, num_threads=2, **kwargs)
    except RuntimeError as e:
        with open("/proc/cpuinfo") as f:
            has_avx2 = " avx2" in f.read()
        if kwargs.get("force_fp16") and not has_avx2:
            pytest.skip(f"XNNPACK emulates fp16 on x86 only with AVX2: {e}")
        raise


def test_forced_fp16_inference_through_the_compiled_model_api(float16_file, micro_io):
    x = micro_io["input_nhwc"]
    interpreter = LiteRTModel(float16_file).predict(x)
    fp32 = _compiled(float16_file).predict(x)
    fp16 = _compiled(float16_file, force_fp16=True).predict(x)
    # CompiledModel without flags is the same XNNPACK fp32 graph as the Interpreter.
    assert np.abs(fp32 - interpreter).max() <= 1e-5
    # Forced: every output is a float16 number, i.e. the graph really ran in fp16 ...
    assert fp16_rounded(fp16) and not fp16_rounded(fp32)
    # ... and stays close to the official logits (fp16 rounding of every intermediate: about 1e-2 here).
    error = np.abs(fp16 - micro_io["logits"]).max()
    assert 0 < error <= 0.05 * np.abs(micro_io["logits"]).max()
    assert np.array_equal(fp16.argmax(-1), micro_io["logits"].argmax(-1))


def test_compiled_model_runner_rejects_what_it_cannot_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        CompiledModelRunner(tmp_path / "missing.tflite")
    with pytest.raises(RuntimeError, match="could not compile"):
        CompiledModelRunner(b"TFL3 is not a model")


def test_fp16_rounded():
    assert fp16_rounded(np.array([0.5, 0.25048828125, -3.0], np.float32))
    assert not fp16_rounded(np.array([0.1], np.float32))
