"""Run folders and files where large runs keep them: any tf.io.gfile URL (gs://, s3://, ram://) or file:// URL,
through training/storage.py. gs:// itself needs the network; TensorFlow's in-memory ram:// stands in for it."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

from keras_cmt.training import storage  # noqa: E402


def test_training_in_ram_file_system_writes_every_output_and_refuses_a_second_run():
    result = subprocess.run(
        [sys.executable, os.path.join(helpers.FIXTURES, "ram_run.py")],
        cwd=helpers.REPO,
        env=helpers.env(PYTHONPATH=helpers.REPO + os.pathsep + helpers.FIXTURES),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    files = summary["files"]
    for expected in (
        "run.json",
        "metrics.csv",
        "curves.png",
        "results.json",
        "model.keras",
        "model.weights.h5",
        "checkpoints/best.weights.h5",
        "checkpoints/last.weights.h5",
    ):
        assert expected in files, (expected, files)
    assert any(f.startswith("logs/") for f in files)  # TensorBoard
    assert not [f for f in files if f.startswith("backup/") or "/.tmp-" in f or f.startswith(".tmp-")]
    assert summary["epochs_logged"] == ["0", "1"]  # each epoch once
    assert summary["results"]["epochs"] == 2 and summary["second_run"] == "exit 2"


def test_file_url_model_dir_is_the_local_folder(tmp_path):
    """The URL form of a local folder: no folder named `file:` appears, the run and its evaluation land there."""
    folder = tmp_path / "run"
    url = f"file://{folder}"
    result = helpers.run_train(
        f"--model_dir={url}",
        "--dataset=digits",
        "--image_size=32",
        "--batch_size=16",
        "--epochs=1",
        "--steps_per_epoch=2",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (folder / "results.json").exists() and (folder / "metrics.csv").exists()
    assert not os.path.exists(os.path.join(helpers.REPO, "file:"))
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_cmt.training.evaluate",
            f"--model_path={url}/model.keras",
            "--dataset=digits",
            f"--output={url}/evaluation.json",
        ],
        cwd=helpers.REPO,
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    evaluated = json.loads((folder / "evaluation.json").read_text())
    trained = json.loads((folder / "results.json").read_text())
    assert abs(evaluated["top1"] - trained["val_accuracy"]) < 1e-6


def test_a_url_that_cannot_be_written_fails_at_start_up_with_one_line(tmp_path):
    result = helpers.run_train(
        "--model_dir=nosuch://bucket/run", "--dataset=digits", "--image_size=32", "--epochs=1", timeout=120
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("keras_cmt.training.train: error: --model_dir=nosuch://bucket/run: cannot use it: ")
    assert "nosuch" in last.split("cannot use it: ")[1]
    assert "Epoch" not in result.stdout


def test_storage_writes_whole_files_and_copies_in_ram():
    storage.write_json("ram://t/a/b.json", {"x": 1})
    assert storage.read_json("ram://t/a/b.json") == {"x": 1}
    storage.publish_copy("ram://t/a/b.json", "ram://t/c/last.json")
    assert storage.read_json("ram://t/c/last.json") == {"x": 1}
    assert storage.listdir("ram://t/a") == ["b.json"]  # no temporary name left
    with storage.local_copy("ram://t/a/b.json") as local:
        assert not storage.is_remote(local) and json.load(open(local)) == {"x": 1}
    storage.remove("ram://t")
    assert not storage.exists("ram://t/a/b.json")
    assert storage.normalize("file:///x/y") == "/x/y" and storage.join("gs://b/run/", "m.keras") == "gs://b/run/m.keras"
    with pytest.raises(storage.StorageError, match=r"^--weights=ram://nope/w.h5: no such file$"):
        storage.check_readable("ram://nope/w.h5", "--weights")
