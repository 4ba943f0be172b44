"""A training run killed with SIGKILL after its first epoch was backed up resumes there and finishes with every
epoch logged exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402


def test_sigkill_after_first_epoch_resumes_and_logs_each_epoch_once(tmp_path):
    model_dir = tmp_path / "run"
    args = [
        f"--model_dir={model_dir}",
        "--dataset=digits",
        "--image_size=32",
        "--batch_size=16",
        "--epochs=3",
        "--steps_per_epoch=3",
    ]
    metadata = model_dir / "backup" / "train" / "training_metadata.json"
    proc = subprocess.Popen(
        helpers.train_command(*args),
        cwd=helpers.REPO,
        env=helpers.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if metadata.exists() and json.loads(metadata.read_text())["epoch"] >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before it could be killed"
        assert metadata.exists(), "no backup within the time limit"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(metadata.read_text())["epoch"]
    assert 1 <= killed_at < 3
    assert not (model_dir / "results.json").exists()

    # Resumed with the URL form of the same folder (what gs:// run folders share): the same run.
    result = helpers.run_train(f"--model_dir=file://{model_dir}", *args[1:], timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"resuming the interrupted run in {model_dir} after epoch {killed_at}" in log
    assert "Epoch 1/3" not in log  # the resumed run starts at the epoch the first one reached
    rows = helpers.read_csv_rows(model_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["resumed"] is True and results["epochs_logged"] == 3
    assert not (model_dir / "backup" / "train").exists()

    again = helpers.run_train(*args, timeout=120)  # a finished run is not silently overwritten
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("keras_cmt.training.train: error: --model_dir=")
