"""keras_cmt.optimizers.AdamW: Keras' AdamW updates, its schedule evaluated once per step, saved and reloaded."""

import numpy as np
import pytest

import keras
import keras_cmt
from keras_cmt.optimizers import AdamW

pytestmark = pytest.mark.all_backends


@keras.saving.register_keras_serializable(package="keras_cmt_tests")
class CountingCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Keras' warm-up cosine, counting how often the optimizer evaluates it."""

    def __init__(self, decay_steps=20):
        self.decay_steps = decay_steps
        self.inner = keras.optimizers.schedules.CosineDecay(
            1e-4, decay_steps, alpha=0.1, warmup_target=1e-2, warmup_steps=3
        )
        self.calls = 0

    def __call__(self, step):
        self.calls += 1
        return self.inner(step)

    def get_config(self):
        return {"decay_steps": self.decay_steps}


def _dense_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="gelu")(inputs)
    x = keras.layers.LayerNormalization()(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def _fit(optimizer_class, steps=6, amsgrad=False):
    model = _dense_model()
    optimizer = optimizer_class(
        learning_rate=CountingCosine(), weight_decay=0.05, beta_1=0.9, beta_2=0.999, amsgrad=amsgrad
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) == 1])
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4 * steps, 6)).astype("float32")
    y = rng.normal(size=(4 * steps, 3)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model, optimizer


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fit_gives_the_weights_keras_adamw_gives(amsgrad):
    ours, ours_optimizer = _fit(AdamW, amsgrad=amsgrad)
    theirs, theirs_optimizer = _fit(keras.optimizers.AdamW, amsgrad=amsgrad)
    assert int(ours_optimizer.iterations) == int(theirs_optimizer.iterations) == 6
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
    # The weights moved: the comparison is not between two untouched models.
    assert not np.allclose(
        keras.ops.convert_to_numpy(ours.weights[0]), keras.ops.convert_to_numpy(_dense_model().weights[0])
    )


def test_the_schedule_runs_once_per_step_not_once_per_decayed_variable():
    variables = [keras.Variable(np.full((3, 3), i + 1.0, "float32")) for i in range(6)]
    schedule = CountingCosine()
    optimizer = AdamW(learning_rate=schedule, weight_decay=0.05)
    optimizer.build(variables)
    steps = 4
    for _ in range(steps):
        optimizer.apply([keras.ops.full((3, 3), 0.1) for _ in variables], variables)
    # Keras' own AdamW evaluates it once per decayed variable and once for the update (7 a step here); PyTorch's
    # multi-tensor weight decay asks Keras for the rate itself, once.
    assert steps <= schedule.calls <= 2 * steps
    # Between steps the rate is the schedule's at the current step, as with Keras' AdamW.
    expected = keras.ops.convert_to_numpy(schedule.inner(steps))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(optimizer.learning_rate), expected, rtol=1e-6)


def test_the_bias_correction_runs_once_per_step_not_once_per_variable(monkeypatch):
    from keras_cmt import optimizers

    powers = []
    power = optimizers.ops.power
    monkeypatch.setattr(optimizers.ops, "power", lambda *a: powers.append(a) or power(*a))
    variables = [keras.Variable(np.full((3, 3), i + 1.0, "float32")) for i in range(6)]
    optimizer = AdamW(learning_rate=1e-3, weight_decay=0.05)
    optimizer.build(variables)
    steps = 4
    for _ in range(steps):
        optimizer.apply([keras.ops.full((3, 3), 0.1) for _ in variables], variables)
    # Two powers (of beta_1 and beta_2) a step, where Keras' Adam takes them for each of the 6 variables. PyTorch's
    # multi-tensor AdamW computes its own, once a step, and calls none of these.
    assert len(powers) == (0 if keras.config.backend() == "torch" else 2 * steps)


def test_a_float_rate_stays_settable():
    optimizer = AdamW(learning_rate=1e-3, weight_decay=0.05)
    optimizer.learning_rate = 5e-4
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(5e-4)
    with pytest.raises(TypeError, match="not settable"):
        AdamW(learning_rate=CountingCosine()).learning_rate = 1e-3


def test_a_compiled_model_saved_with_it_reloads_with_its_state(tmp_path):
    model, optimizer = _fit(AdamW, steps=3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.optimizer) is type(optimizer)
    assert isinstance(restored.optimizer, keras_cmt.optimizers.AdamW)
    assert int(restored.optimizer.iterations) == 3
    assert restored.optimizer.weight_decay == pytest.approx(0.05)
    for a, b in zip(restored.optimizer.variables, optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
