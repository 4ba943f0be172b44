"""keras_cmt.training.demo, the README's main job: train on digits, convert to TFLite (fp32, dynamic, int8), report,
on a quiet screen."""

import json
import os
import re
import subprocess
import sys

from keras_cmt import quiet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_CMT_VERBOSE")}
    return subprocess.run(
        [sys.executable, "-m", "keras_cmt.training.demo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _library_noise(output):
    """Lines of the libraries' chatter: C++ log records, Python warnings, absl's Python warnings."""
    return [
        line
        for line in output.splitlines()
        if quiet.NATIVE_NOISE.match(line.encode()) or re.search(r"\w+Warning: |warnings\.warn|^WARNING:", line)
    ]


def test_demo_trains_converts_and_reports_on_a_quiet_screen(tmp_path):
    model_dir = tmp_path / "demo"
    args = ["--model_dir", str(model_dir), "--epochs", "1", "--image_size", "32", "--batch_size", "64"]
    result = _demo(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads((model_dir / "report.json").read_text())
    assert saved["keras"]["epochs"] == 1 and 0.0 <= saved["keras"]["val_accuracy"] <= 1.0
    assert saved["keras"]["seed"] == 0 and set(saved["stage_wall_time_s"]) == {"train", "convert", "evaluate"}
    rows = {row["format"]: row for row in saved["tflite"]}
    assert set(rows) == {"fp32", "dynamic", "int8"}
    for row in rows.values():
        assert row["xnnpack_partitions"] == 1 and row["nodes_on_default_kernels"] == 0, row
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["median_ms"] > 0
    assert rows["dynamic"]["file_mb"] < 0.5 * rows["fp32"]["file_mb"]
    assert rows["fp32"]["top1_agreement_with_fp32"] == 1.0 and rows["fp32"]["ratio_to_fp32"] == 1.0
    assert 0.0 <= rows["dynamic"]["top1_agreement_with_fp32"] <= 1.0
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".tmp")]  # everything written atomically

    # What a person sees: a line per stage, one line per epoch, the table and where things are; nothing else.
    screen = result.stdout + result.stderr
    assert _library_noise(screen) == [], _library_noise(screen)
    assert "FINAL_WEIGHTS_SHA256" not in screen
    for expected in (
        "[1/3] training cmt_ti on digits",
        "starting a new run in",
        "[2/3] converting",
        "[3/3] evaluating",
        "| format |",
        "| int8 |",
        f"report: {model_dir}/report.json",
        f"{model_dir}/curves.png",
    ):
        assert expected in screen, expected

    again = _demo(*args)  # a finished run with the same settings is reused, not trained again
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[1/3] reusing the finished run in {model_dir}" in again.stdout
    assert f"[2/3] reusing the TFLite files converted from {model_dir}/model.keras" in again.stdout
    other = _demo(*args[:-2], "--batch_size", "32")  # ... one with other settings is refused, not overwritten
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1] == (
        f"keras_cmt.training.demo: error: --model_dir={model_dir} holds a finished run with other settings "
        "(global_batch_size=64); use another --model_dir or --overwrite"
    )
    assert json.loads((model_dir / "report.json").read_text())["keras"] == saved["keras"]


def _processes_naming(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_a_failed_training_ends_the_int8_process_started_ahead(tmp_path):
    """The int8 conversion's process starts before training (its imports overlap it); a training that fails
    ends the demo in one line with that process gone, and nothing converted."""
    model_dir = tmp_path / "demo"
    result = _demo("--model_dir", str(model_dir), "--epochs", "0")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("keras_cmt.training.demo: error: ") and "epochs" in last, last
    assert _processes_naming(f"--output={model_dir}") == []
    assert not model_dir.exists() or not [p for p in model_dir.iterdir() if p.suffix == ".tflite"]
