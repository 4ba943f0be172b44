"""A model_dir is started, resumed or refused as training/run_folder.py says: nothing of the user's is overwritten."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

from keras_cmt.training import run_folder  # noqa: E402

TI_64 = run_folder.identity("cmt_ti", None, "digits", 64)


def _run_of(folder, ident=TI_64, epoch=None, finished=False):
    folder.mkdir(parents=True, exist_ok=True)
    run_folder.write_record(str(folder), ident, ["train"])
    (folder / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    if epoch is not None:
        backup = folder / "backup" / "train"
        backup.mkdir(parents=True)
        (backup / "training_metadata.json").write_text(json.dumps({"epoch": epoch, "batch": -1, "weights": "w"}))
    if finished:
        (folder / "results.json").write_text("{}")
    return str(folder)


def test_new_and_empty_folders_start_a_new_run(tmp_path):
    absent = str(tmp_path / "absent")
    assert run_folder.plan(absent, TI_64, False) == ("new", f"starting a new run in {absent}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".tmp-abc.results.json").write_text("")  # an interrupted atomic write
    assert run_folder.plan(str(tmp_path / "empty"), TI_64, False)[0] == "new"


def test_an_interrupted_run_resumes_after_its_last_epoch_or_starts_again(tmp_path):
    folder = _run_of(tmp_path / "run", epoch=3)
    assert run_folder.plan(folder, TI_64, False) == (
        "resume",
        f"resuming the interrupted run in {folder} after epoch 3",
    )
    no_epoch = _run_of(tmp_path / "early")
    mode, line = run_folder.plan(no_epoch, TI_64, False)
    assert mode == "new" and line.endswith("the interrupted one completed no epoch")
    assert run_folder.plan(folder, TI_64, True)[0] == "restart"


def test_another_models_run_and_unrelated_files_are_refused(tmp_path):
    other = _run_of(tmp_path / "xs", ident=run_folder.identity("cmt_xs", None, "imagenet2012", 192), epoch=2)
    with pytest.raises(run_folder.RunFolderError) as e:
        run_folder.plan(other, TI_64, False)
    assert str(e.value) == (
        f"--model_dir={other} holds a run of cmt_xs on imagenet2012 at 192px, not of cmt_ti on "
        "digits at 64px; use another --model_dir or --overwrite to replace it"
    )
    assert run_folder.plan(other, TI_64, True)[0] == "restart"

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "notes.txt", "metrics.csv"):
        (photos / name).write_text("x")
    for overwrite in (False, True):
        with pytest.raises(run_folder.RunFolderError) as e:
            run_folder.plan(str(photos), TI_64, overwrite)
        assert str(e.value) == (
            f"--model_dir={photos} holds files that are not a keras_cmt run (a.jpg, b.jpg, "
            "c.jpg and 1 more); give a new or empty folder"
        )
    finished = _run_of(tmp_path / "done", finished=True)
    with pytest.raises(run_folder.RunFolderError, match="holds a finished run"):
        run_folder.plan(finished, TI_64, False)


def test_clear_removes_only_a_runs_outputs(tmp_path):
    folder = _run_of(tmp_path / "run", epoch=1, finished=True)
    (tmp_path / "run" / ".tmp-x.model.keras").write_text("")
    run_folder.clear(folder)
    assert sorted(os.listdir(folder)) == [".tmp-x.model.keras"]


def test_train_refuses_a_folder_of_unrelated_files_and_leaves_it_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    result = helpers.run_train(
        f"--model_dir={folder}", "--dataset=digits", "--image_size=32", "--epochs=1", "--overwrite", timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"keras_cmt.training.train: error: --model_dir={folder} holds files that are not a keras_cmt run "
        "(thesis.tex); give a new or empty folder"
    )
    assert os.listdir(folder) == ["thesis.tex"] and (folder / "thesis.tex").read_text() == "precious"
