"""keras_cmt.training.demo, the README's main job: train on digits, convert to TFLite (fp32, dynamic, int8), report."""

import json

from keras_cmt.training import demo


def test_demo_trains_converts_and_reports(tmp_path):
    model_dir = tmp_path / "demo"
    report = demo.run(demo._parse_args(["--model_dir", str(model_dir), "--epochs", "1", "--image_size", "32",
                                        "--batch_size", "64"]))
    saved = json.loads((model_dir / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["keras"]["epochs"] == 1 and 0.0 <= saved["keras"]["val_accuracy"] <= 1.0
    rows = {row["format"]: row for row in saved["tflite"]}
    assert set(rows) == {"fp32", "dynamic", "int8"}
    for row in rows.values():
        assert row["xnnpack_partitions"] == 1 and row["nodes_on_default_kernels"] == 0, row
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["median_ms"] > 0
    assert rows["dynamic"]["file_mb"] < 0.5 * rows["fp32"]["file_mb"]
    assert rows["fp32"]["top1_agreement_with_fp32"] == 1.0  # its own reference
    assert 0.0 <= rows["dynamic"]["top1_agreement_with_fp32"] <= 1.0
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".tmp")]  # everything written atomically
