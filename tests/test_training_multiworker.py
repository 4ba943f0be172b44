"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1, and the Keras compatibility fix it needs.

If `test_keras_still_has_the_multi_worker_bug` or `test_unpatched_keras_fails_multi_worker_fit` fails after a Keras
upgrade, the upgrade changed or fixed trainer.py: check whether training/multiworker_compat.py is still needed.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

sys.path.insert(0, helpers.REPO)

TINY_FIT = os.path.join(helpers.FIXTURES, "mw_tiny_fit.py")


def test_keras_still_has_the_multi_worker_bug():
    from keras_cmt.training import multiworker_compat

    assert multiworker_compat.bug_present() == {"symbolic_build": True, "reduce": True}, (
        "keras/src/backend/tensorflow/trainer.py changed: re-check keras-team/keras#20585 and whether "
        "training/multiworker_compat.py still applies or can be deleted"
    )


def test_compat_changes_nothing_for_other_strategies():
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from keras_cmt.training import multiworker_compat

    assert multiworker_compat.apply()
    try:
        assert (
            multiworker_compat.is_applied() and tf_trainer.reduce_per_replica is multiworker_compat.reduce_per_replica
        )
        strategy = tf.distribute.get_strategy()
        assert not multiworker_compat.is_multi_worker(strategy)
        values = {"loss": tf.constant(2.0), "v": tf.constant([1.0, 3.0])}
        ours = multiworker_compat.reduce_per_replica(values, strategy, "auto")
        keras_own = multiworker_compat._ORIGINAL_REDUCE_PER_REPLICA(values, strategy, "auto")
        assert {k: v.numpy().tolist() for k, v in ours.items()} == {k: v.numpy().tolist() for k, v in keras_own.items()}
        assert multiworker_compat.apply()  # idempotent
    finally:
        multiworker_compat.remove()
    assert not multiworker_compat.is_applied()


def test_unpatched_keras_fails_multi_worker_fit():
    """Two workers fit a tiny Dense model without the compat fix. (With it, see the keras_cmt.training.train test
    below.)"""
    results = helpers.run_two_workers([sys.executable, TINY_FIT, "unpatched"], timeout=240)
    assert all(rc != 0 for rc, _ in results), (
        "model.fit under MultiWorkerMirroredStrategy now works without training/multiworker_compat.py: "
        "the Keras bug is fixed; delete the compat module"
    )
    assert any("Attempt to convert a value (PerReplica" in out for _, out in results), [
        out[-2000:] for _, out in results
    ]


def test_training_train_with_two_workers_ends_with_identical_weights(tmp_path):
    model_dir = tmp_path / "run"
    command = helpers.train_command(
        f"--model_dir={model_dir}",
        "--dataset=digits",
        "--strategy=multi_worker",
        "--image_size=32",
        "--batch_size=16",
        "--epochs=1",
        "--steps_per_epoch=4",
    )
    results = helpers.run_two_workers(command, timeout=400)
    assert all(rc == 0 for rc, _ in results), [out[-3000:] for _, out in results]
    prints = {}
    for _, out in results:
        for line in out.splitlines():
            if line.startswith("FINAL_WEIGHTS_SHA256"):  # all weights, BatchNorm statistics included
                _, task, digest, _ = line.split()
                prints[task] = digest
    assert set(prints) == {"worker-0", "worker-1"}
    assert prints["worker-0"] == prints["worker-1"]
    # Only the chief wrote the outputs; they describe one epoch of 4 steps over 2 replicas.
    res = json.loads((model_dir / "results.json").read_text())
    assert res["replicas"] == 2 and res["steps"] == 4 and res["weights_sha256"] == prints["worker-0"]
    assert [int(r["epoch"]) for r in helpers.read_csv_rows(model_dir / "metrics.csv")] == [0]
    assert not (model_dir / "backup" / "worker-1" / "train").exists()
