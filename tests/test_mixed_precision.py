"""CMT under Keras' `mixed_bfloat16` policy (what `--mixed_precision` trains with on TPUs, CPUs and under
`--distribution`), against float32 and the official logits. On every backend.

Stated tolerance: bfloat16 keeps 8 significant bits, so each op is off by up to 0.4%; through CMT-Ti's 35 blocks the
official fixture's logits (max |logit| 2.96) come out at most 0.031 (JAX, TensorFlow) to 0.038 (PyTorch) away, with
the same top-1 class. The tests allow 0.1, about three times that.
"""

import contextlib

import keras
import numpy as np
import pytest

import keras_cmt
from conftest import build_micro, numpy, to_model_layout

pytestmark = pytest.mark.all_backends

LOGIT_TOLERANCE = 0.1


@contextlib.contextmanager
def dtype_policy(policy):
    """Keras' global dtype policy for the models built in the block; the previous one afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
        keras.backend.clear_session()


def test_cmt_tiny_bfloat16_logits_near_the_official_ones(ti_fixture):
    checkpoint, io = ti_fixture
    with dtype_policy("mixed_bfloat16"):
        model = keras_cmt.CMTTiny(weights=checkpoint, classifier_activation=None)
        head = model.get_layer("head")
        assert head.compute_dtype == "bfloat16" and head.kernel.dtype == "float32"
        logits = numpy(keras.ops.cast(model(to_model_layout(io["input_nhwc"])), "float32"))
    assert np.isfinite(logits).all()
    assert np.abs(logits - io["logits"]).max() <= LOGIT_TOLERANCE
    np.testing.assert_array_equal(logits.argmax(-1), io["logits"].argmax(-1))


def _train_steps(micro_checkpoint, micro_io, policy, steps=3):
    """Losses of a few AdamW steps of the micro fixture under `policy`, from the official weights."""
    with dtype_policy(policy):
        model = build_micro(
            weights=str(micro_checkpoint), classifier_activation="softmax", drop_path_rate=0.0, head_dropout=0.0
        )
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="categorical_crossentropy")
        x = to_model_layout(micro_io["input_nhwc"])
        y = np.eye(10, dtype="float32")[np.arange(len(x)) % 10]
        return [float(model.train_on_batch(x, y)) for _ in range(steps)]


def test_bfloat16_training_steps_agree_with_float32(micro_checkpoint, micro_io):
    """Finite losses, within 2% of float32's at every step (measured: within 0.3%)."""
    float32 = _train_steps(micro_checkpoint, micro_io, "float32")
    bfloat16 = _train_steps(micro_checkpoint, micro_io, "mixed_bfloat16")
    assert all(np.isfinite(bfloat16))
    np.testing.assert_allclose(bfloat16, float32, rtol=2e-2)
    assert bfloat16[-1] < bfloat16[0]  # and it learns
