"""The benchmark tool: a table and a JSON with latency, memory, size, the XNNPACK partitions and the GPU verdict."""

import json
import os

import keras

from keras_cmt.tflite import benchmark, convert


def _small_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="gelu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="head")(x))


def test_benchmark_table_and_json(tmp_path, capsys):
    model_path = tmp_path / "small.tflite"
    convert.convert(_small_model(), model_path)
    out = tmp_path / "bench.json"
    assert (
        benchmark.main([str(model_path), "--threads", "1", "2", "--runs", "5", "--warmup", "1", "--json", str(out)])
        == 0
    )
    table = capsys.readouterr().out
    assert "| model" in table and "small.tflite" in table
    results = json.loads(out.read_text())["results"]
    assert [r["threads"] for r in results] == [1, 2]
    for r in results:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["p10_ms"]
        assert r["file_mb"] == os.path.getsize(model_path) / 1e6
        assert r["input_shape"] == [1, 32, 32, 3]
        assert r["xnnpack_partitions"] == 1 and r["nodes_on_default_kernels"] == 0
        assert r["gpu_compatible"] is True and r["gpu_incompatible"] == []
        assert r["runtime"] == "interpreter"
        assert r["peak_rss_mb"] >= r["model_mem_mb"] > 0
    no_xnnpack = benchmark.run(str(model_path), 1, runs=2, warmup=0, use_xnnpack=False)
    assert no_xnnpack["xnnpack_partitions"] == 0 and no_xnnpack["nodes_on_default_kernels"] > 0


def test_interleaved_ab_reports_ratios_to_the_first(tmp_path, capsys):
    small, wider = tmp_path / "small.tflite", tmp_path / "wider.tflite"
    convert.convert(_small_model(), small)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", activation="gelu")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="gelu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    convert.convert(keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="head")(x)), wider)
    out = tmp_path / "ab.json"
    assert (
        benchmark.main([str(small), str(wider), "--interleave", "--runs", "7", "--warmup", "1", "--json", str(out)])
        == 0
    )
    assert "ratio to first" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["small.tflite", "wider.tflite"]
    assert results[0]["ratio_to_first"] == 1.0
    # About 300x the multiply-adds of the small model: slower whatever the load.
    assert results[1]["ratio_to_first"] > 1.0
    assert all(r["interleaved"] and r["runs"] == 7 and r["xnnpack_partitions"] == 1 for r in results)


def test_interleaved_names_a_missing_file(tmp_path, capsys):
    assert benchmark.main([str(tmp_path / "missing.tflite"), "--interleave"]) == 2
    assert "missing.tflite" in capsys.readouterr().err


def test_runtimes_and_what_runs_where(tmp_path, capsys):
    # Interpreter, CompiledModel and CompiledModel with XNNPACK's fp16 forced, each row with the XNNPACK
    # partitions, the GPU Analyzer's verdict and how far its output is from the Interpreter's.
    model_path = tmp_path / "small.tflite"
    convert.convert(_small_model(), model_path, quantize="float16")
    out = tmp_path / "bench.json"
    assert (
        benchmark.main(
            [
                str(model_path),
                "--runtime",
                "interpreter",
                "compiled",
                "compiled_fp16",
                "--threads",
                "1",
                "--runs",
                "3",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "GPU Analyzer" in table and "CompiledModel, fp16 forced" in table and " compatible " in table
    results = {r["runtime"]: r for r in json.loads(out.read_text())["results"]}
    assert sorted(results) == ["compiled", "compiled_fp16", "interpreter"]
    for r in results.values():
        assert r["xnnpack_partitions"] == 1 and r["nodes_on_default_kernels"] == 0 and r["gpu_compatible"]
    assert results["compiled"]["max_abs_diff_vs_interpreter"] <= 1e-6
    assert results["compiled"]["fully_accelerated"] and not results["compiled"]["fp16_rounded_output"]
    assert results["compiled_fp16"]["fp16_rounded_output"]  # the forced graph really ran in fp16
    assert 0 < results["compiled_fp16"]["max_abs_diff_vs_interpreter"] <= 1e-2  # softmax probabilities


def test_the_gpu_verdict_names_the_flagged_op_types():
    from keras_cmt.tflite import compatibility

    report = (
        "Subgraph#0 main(T#0) -> [T#2]\n"
        "  Op#0 CONV_2D(T#0, T#1) -> [T#2]\n"
        "  Op#1 SOMETHING_NEW(T#2) -> [T#3]\n"
        "GPU COMPATIBILITY WARNING: Not supported op SOMETHING_NEW\n"
        "\nGPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 1\n"
    )
    assert compatibility.gpu_flagged_op_types(report) == {"SOMETHING_NEW": 1}
    verdict = {
        "gpu_compatible": False,
        "gpu_incompatible": compatibility.gpu_incompatible_ops(report),
        "gpu_incompatible_op_types": compatibility.gpu_flagged_op_types(report),
    }
    assert compatibility.gpu_verdict_text(verdict) == "not compatible: SOMETHING_NEWx1"
    assert compatibility.gpu_verdict_text({"gpu_compatible": True, "gpu_incompatible": []}) == "compatible"
