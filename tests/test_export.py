"""Every Keras export format on every backend: the file, loaded by the runtime its users run it in, gives the
official logits within 1e-4; a format that cannot work on a backend is refused in one line that says what to use
instead, and leaves nothing behind. Keras' own `model.export` on a plain keras_cmt model, and `keras-cmt export`."""

import io
import os

import keras
import numpy as np
import pytest

from conftest import MICRO_CONFIG, build_micro, numpy
from keras_cmt import cli
from keras_cmt.tflite import export

pytestmark = pytest.mark.all_backends
BACKEND = keras.backend.backend()
# What each backend writes (everything else is refused, by keras_cmt before any work).
WRITES = {
    "tensorflow": {"litert", "onnx", "openvino", "saved_model"},
    "jax": {"onnx"},
    "torch": {"litert", "onnx", "openvino", "torch"},
}


@pytest.fixture(scope="module")
def micro_logits_model(micro_checkpoint):
    return build_micro(weights=str(micro_checkpoint), classifier_activation=None)


def _output(folder, fmt):
    return os.path.join(folder, "micro" + (export.FORMATS[fmt][1] or "_saved_model"))


@pytest.mark.parametrize("fmt", sorted(export.FORMATS))
def test_each_format_gives_the_official_logits_in_its_runtime_or_is_refused(
    fmt, micro_logits_model, micro_io, tmp_path
):
    output = _output(str(tmp_path), fmt)
    if fmt not in WRITES[BACKEND]:
        with pytest.raises(export.ExportError) as refused:
            export.export(micro_logits_model, output, fmt, input_range="normalized")
        message = str(refused.value)
        assert "\n" not in message and f"--format {fmt} on the {BACKEND} backend" in message
        assert "KERAS_BACKEND=" in message  # what to use instead
        assert os.listdir(tmp_path) == []
        return
    error = export.export(micro_logits_model, output, fmt, input_range="normalized")
    assert error <= 1e-4
    logits = export.run_exported(fmt, output, micro_io["input_nhwc"])
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4
    # The checked file and nothing else: no temporary file or folder is left beside it.
    written = {os.path.basename(output)} | ({"micro.bin"} if fmt == "openvino" else set())
    assert set(os.listdir(tmp_path)) == written


def test_the_default_file_takes_pixels_with_the_normalisation_inside(micro_logits_model, tmp_path):
    import keras_cmt

    path = str(tmp_path / "micro.onnx")
    export.export(micro_logits_model, path, "onnx")
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    expected = numpy(micro_logits_model(keras_cmt.preprocess_input(pixels)))
    assert np.abs(export.run_exported("onnx", path, pixels) - expected).max() <= 1e-4


@pytest.mark.parametrize("fmt", sorted(WRITES[BACKEND] & {"onnx", "openvino", "torch"}))
def test_keras_own_export_of_a_plain_cmt(fmt, micro_logits_model, micro_io, tmp_path):
    """`model.export(path, format=...)` on the model as built (no keras_cmt code in between), for the formats
    this backend writes: on PyTorch the ONNX export needs the LayerNorm written in keras.ops."""
    micro_logits_model(micro_io["input_nhwc"])  # Keras refuses to export a model never called
    path = str(tmp_path / f"micro{export.FORMATS[fmt][1]}")
    micro_logits_model.export(path, format=fmt, verbose=False)
    logits = export.run_exported(fmt, path, micro_io["input_nhwc"])
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4


def test_a_file_that_fails_its_check_is_not_written(micro_logits_model, tmp_path):
    fmt = sorted(WRITES[BACKEND])[0]
    with pytest.raises(export.ExportError, match="differs from the Keras model by"):
        export.export(micro_logits_model, _output(str(tmp_path), fmt), fmt, atol=-1.0)
    assert os.listdir(tmp_path) == []


def test_bad_output_paths_are_refused_before_any_work(micro_logits_model, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export.export(micro_logits_model, str(tmp_path / "missing" / "m.onnx"), "onnx")
    with pytest.raises(ValueError, match=r"writes a file ending in \.onnx"):
        export.export(micro_logits_model, str(tmp_path / "m.tflite"), "onnx")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="does not hold a SavedModel"):
        export.check_output("saved_model", str(tmp_path / "notes"))
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_keras_cmt_export_command(micro_checkpoint, micro_io, tmp_path, capsys):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    keras_path = tmp_path / "micro.keras"
    model.save(keras_path)
    out = tmp_path / "micro.onnx"
    stdout = io.StringIO()
    args = cli._parser().parse_args(
        ["export", "--model", str(keras_path), "--format", "onnx", "--input_range", "normalized", "--output", str(out)]
    )
    assert cli.export_file(args, out=stdout) == 0
    assert stdout.getvalue().startswith(f"wrote {out} (onnx, checked in onnxruntime")
    assert np.abs(export.run_exported("onnx", str(out), micro_io["input_nhwc"]) - micro_io["logits"]).max() <= 1e-4
    refused = next(f for f in sorted(export.FORMATS) if f not in WRITES[BACKEND])
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(keras_path),
                "--format",
                refused,
                "--output",
                str(tmp_path / ("r" + (export.FORMATS[refused][1] or "_sm"))),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"keras-cmt: error: --format {refused} on the {BACKEND} backend")


def test_files_written_beside_the_entry_point_are_published_with_it(tmp_path):
    """A large model's ONNX keeps its weights in `<name>.onnx.data` (JAX's exporter does so for CMT-S), named in the
    graph relative to the .onnx: both must arrive; a SavedModel folder replaces an older one whole."""
    work = tmp_path / ".export-1"
    work.mkdir()
    (work / "m.onnx").write_bytes(b"graph")
    (work / "m.onnx.data").write_bytes(b"weights")
    export._publish(str(work / "m.onnx"), str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").read_bytes() == b"graph" and (tmp_path / "m.onnx.data").read_bytes() == b"weights"
    old = tmp_path / "sm"
    old.mkdir()
    (old / "saved_model.pb").write_bytes(b"old")
    (work / "sm").mkdir()
    (work / "sm" / "saved_model.pb").write_bytes(b"new")
    export._publish(str(work / "sm"), str(old))
    assert (old / "saved_model.pb").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export-1", "m.onnx", "m.onnx.data", "sm"]


def test_our_onnx_runs_the_block_layer_norms_as_single_nodes(micro_logits_model, micro_io, tmp_path):
    """`onnx_layer_norm` turns the blocks' moments-form LayerNorms into opset-17 `LayerNormalization` nodes without
    adding a Transpose, in the files written on TensorFlow (tf2onnx, NCHW) and JAX (jax2onnx, NHWC). The PyTorch
    file computes the variance as E[x^2] - E[x]^2, a form the pass does not match: it stays as it was."""
    import collections

    import onnx

    ours = str(tmp_path / "ours.onnx")
    export.export(micro_logits_model, ours, "onnx", input_range="normalized")
    counts = collections.Counter(n.op_type for n in onnx.load(ours, load_external_data=False).graph.node)
    blocks = 2 * sum(MICRO_CONFIG["depths"])  # norm1 and norm2 of each CMT block
    if BACKEND == "torch":
        assert counts["LayerNormalization"] == 0
    else:
        assert counts["LayerNormalization"] >= blocks
    keras_own = str(tmp_path / "keras.onnx")
    served = export.serving_model(micro_logits_model, "normalized", True)
    served.export(keras_own, format="onnx", verbose=False, opset_version=export.ONNX_OPSETS.get(BACKEND))
    plain = collections.Counter(n.op_type for n in onnx.load(keras_own, load_external_data=False).graph.node)
    assert counts["Transpose"] <= plain["Transpose"]
    assert counts["ReduceMean"] == plain["ReduceMean"] - 2 * counts["LayerNormalization"]
    logits = export.run_exported("onnx", ours, micro_io["input_nhwc"])
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4
