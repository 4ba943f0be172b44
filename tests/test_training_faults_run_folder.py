"""Faults around a run folder: a second command in a folder in use, a holder killed by SIGKILL, a remote lease gone
stale, a disk that fills up, a truncated weights file. Each is one line naming the folder or file and the cause,
never a traceback, and a run stopped by one resumes once the cause is gone."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

from keras_cmt.training import run_folder, storage  # noqa: E402

ARGS = ["--dataset=digits", "--image_size=32", "--batch_size=16", "--steps_per_epoch=2"]
ERROR = "keras_cmt.training.train: error: "


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith(ERROR)]


def _wait_for(predicate, proc, timeout=400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _lock_pid(folder):
    try:
        return json.loads((folder / run_folder.LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _backed_up_epoch(folder):
    try:
        return json.loads((folder / "backup" / "train" / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_second_run_is_refused_while_the_first_runs_and_a_killed_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    args = [f"--model_dir={folder}", *ARGS]
    first = subprocess.Popen(
        helpers.train_command(*args, "--epochs=200"),
        cwd=helpers.REPO,
        env=helpers.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: _lock_pid(folder) == first.pid and (folder / "run.json").exists(), first), (
            "the first run did not take the lock"
        )
        record = (folder / "run.json").read_text()
        second = helpers.run_train(*args, "--epochs=200", timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2, second.stderr[-3000:]
        assert _errors(second.stderr) == [
            f"{ERROR}--model_dir={folder} is in use by another training run (process {first.pid} on "
            f"{socket.gethostname()}, started {json.loads((folder / run_folder.LOCK).read_text())['started']}); "
            "wait for it to end or use another --model_dir"
        ]
        assert "Traceback" not in second.stderr and "starting" not in second.stdout
        assert (folder / "run.json").read_text() == record and _lock_pid(folder) == first.pid

        assert _wait_for(lambda: _backed_up_epoch(folder) >= 1, first), "no backup within the time limit"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert _lock_pid(folder) == first.pid  # the dead holder's file is still there; the kernel dropped its flock
    killed_at = _backed_up_epoch(folder)
    third = helpers.run_train(*args, f"--epochs={killed_at + 1}", timeout=400)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert f"resuming the interrupted run in {folder} after epoch {killed_at}" in third.stdout
    assert (folder / "results.json").exists() and not (folder / run_folder.LOCK).exists()


def test_a_remote_lease_is_refused_while_fresh_and_taken_over_when_stale():
    folder = "ram://faults/lease"
    lock_path = storage.join(folder, run_folder.LOCK)
    storage.write_json(
        lock_path, {"host": "elsewhere", "pid": 7, "token": "t", "started": "then", "heartbeat": time.time()}
    )
    with pytest.raises(run_folder.RunFolderInUse) as refused:
        run_folder.lock(folder, timeout_s=60, settle_s=0)
    assert str(refused.value).startswith(
        f"--model_dir={folder} is in use by another training run (process 7 on "
        "elsewhere, started then, lease refreshed 0 s ago; taken over after 60 s"
    )

    storage.write_json(lock_path, {"host": "elsewhere", "pid": 7, "token": "t", "heartbeat": time.time() - 61})
    lease = run_folder.lock(folder, timeout_s=60, refresh_s=0.05, settle_s=0)
    try:
        held = storage.read_json(lock_path)
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
        time.sleep(0.3)
        assert storage.read_json(lock_path)["heartbeat"] > held["heartbeat"]  # the daemon thread refreshes it
        lease.check()
        storage.write_json(lock_path, {"host": "elsewhere", "pid": 8, "token": "u", "heartbeat": time.time()})
        time.sleep(0.3)
        with pytest.raises(run_folder.RunFolderInUse, match="process 8 on elsewhere took over this run's lease"):
            lease.check()
    finally:
        lease.release()
    assert storage.read_json(lock_path)["pid"] == 8  # a lease lost to another process is left to it
    storage.remove(folder)
    run_folder.lock(folder, settle_s=0).release()
    assert not storage.exists(lock_path)


def test_a_full_disk_is_one_line_and_the_run_resumes_once_space_is_freed(tmp_path):
    """The disk fills at the second epoch's backup (tests/fixtures/training/full_disk_train.py fakes ENOSPC in
    keras_cmt's atomic writer, so no root or tmpfs is needed)."""
    folder = tmp_path / "run"
    args = [f"--model_dir={folder}", *ARGS, "--epochs=3"]
    full = subprocess.run(
        [sys.executable, os.path.join(helpers.FIXTURES, "full_disk_train.py"), *helpers.train_command(*args)[3:]],
        cwd=helpers.REPO,
        env=helpers.env(FULL_DISK_AT_EPOCH="2"),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert full.returncode == 1, full.stdout[-3000:] + full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    lines = [line for line in full.stderr.splitlines() if "no space left" in line]
    assert len(lines) == 1 and lines == _errors(full.stderr), full.stderr[-3000:]
    assert lines[0].startswith(f"{ERROR}--model_dir={folder}: no space left on device (writing {folder}/backup/")
    assert _backed_up_epoch(folder) == 1 and not (folder / run_folder.LOCK).exists()
    assert not [name for _, _, names in os.walk(folder) for name in names if name.startswith(".tmp-")]

    resumed = helpers.run_train(*args, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming the interrupted run in {folder} after epoch 1" in resumed.stdout
    assert "Epoch 1/3" not in resumed.stdout
    assert [int(r["epoch"]) for r in helpers.read_csv_rows(folder / "metrics.csv")] == [0, 1, 2]
    assert json.loads((folder / "results.json").read_text())["epochs_logged"] == 3


@pytest.fixture(scope="module")
def damaged_files(tmp_path_factory):
    """A truncated .weights.h5 and .keras of the tiny model, and a text file named .weights.h5."""
    import keras_cmt

    root = tmp_path_factory.mktemp("damaged")
    model = keras_cmt.CMT(input_shape=(32, 32, 3), classes=10, **helpers.TINY_MODEL_KWARGS)
    files = {}
    for name in ("model.weights.h5", "model.keras"):
        whole = root / f"whole.{name}"
        (model.save_weights if name.endswith(".h5") else model.save)(str(whole))
        files[name] = root / f"truncated.{name}"
        files[name].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    files["text"] = root / "notes.weights.h5"
    files["text"].write_text("not weights\n")
    return files


def test_a_truncated_weights_file_fails_train_in_one_line_before_the_folder_is_touched(tmp_path, damaged_files):
    for key, cause in (("model.weights.h5", "truncated file"), ("text", "file signature not found")):
        weights = damaged_files[key]
        result = helpers.run_train(
            f"--model_dir={tmp_path / key}", *ARGS, "--epochs=1", f"--weights={weights}", timeout=240
        )
        assert result.returncode == 2, result.stderr[-3000:]
        [line] = _errors(result.stderr)
        assert line.startswith(f"{ERROR}--weights={weights}: not a readable .weights.h5 file: ") and cause in line
        assert "not found" not in line.replace("signature not found", "") and "Traceback" not in result.stderr
        assert not (tmp_path / key).exists()


@pytest.mark.parametrize(
    "flag, key, expected",
    [
        ("--model_path", "model.keras", "not a .keras model: not a zip archive (truncated, or another format)"),
        ("--weights", "model.weights.h5", "cannot load it: not a readable Keras .weights.h5 file"),
    ],
)
def test_evaluate_names_a_damaged_file_and_what_is_wrong(damaged_files, flag, key, expected):
    path = damaged_files[key]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_cmt.training.evaluate",
            f"{flag}={path}",
            "--dataset=digits",
            "--image_size=32",
            "--model_overrides=" + helpers.TINY_MODEL,
        ],
        cwd=helpers.REPO,
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("keras_cmt.training.evaluate: error: ")]
    assert line.startswith(f"keras_cmt.training.evaluate: error: {flag}={path}: {expected}")
    assert "not found" not in line and "Traceback" not in result.stderr
