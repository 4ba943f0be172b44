"""keras_cmt.kernels: the fused C++ CPU training kernels, against the TensorFlow-op closed forms they replace."""

import os
import pathlib
import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_cmt import kernels
from keras_cmt.kernels import build
from keras_cmt.layers.batch_norm import _train_batch_norm
from keras_cmt.layers.gelu import exact_gelu
from keras_cmt.layers.layer_norm import _train_layer_norm

from conftest import build_micro


@pytest.fixture(scope="module")
def library():
    from keras_cmt.kernels.training_ops import _accelerator_visible

    if _accelerator_visible():
        pytest.skip("a GPU/TPU is visible: the CPU kernels are not used there (tested on CPU-only machines, as CI)")
    lib = build.load()
    assert lib is not None, "the CPU kernels did not build on this machine (see the warning)"
    return lib


def _grads(fn, x, gamma, beta, weights):
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        out = fn(x, gamma, beta)
        y = out[0] if isinstance(out, tuple) else out
        loss = tf.reduce_sum(y * weights)
    return out, tape.gradient(loss, [x, gamma, beta])


def _inputs(shape, mean=0.3, std=1.5, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    return (tf.constant(rng.normal(mean, std, shape).astype("float32")),
            tf.constant(rng.uniform(0.5, 1.5, channels).astype("float32")),
            tf.constant(rng.normal(0.0, 0.3, channels).astype("float32")),
            tf.constant(rng.normal(size=shape).astype("float32")))


@pytest.mark.parametrize("gelu", [True, False])
@pytest.mark.parametrize("shape", [(3, 7, 9, 165), (1000, 13), (8, 1, 1, 3000)])
def test_batch_norm_matches_tensorflow_ops(library, gelu, shape):
    x, gamma, beta, weights = _inputs(shape)

    def reference(x, gamma, beta):
        return _train_batch_norm(exact_gelu(x, training=True) if gelu else x, gamma, beta, 1e-5)

    (y, mean, var), grads = _grads(lambda *a: kernels.batch_norm(*a, 1e-5, gelu=gelu), x, gamma, beta, weights)
    (y_ref, mean_ref, var_ref), grads_ref = _grads(reference, x, gamma, beta, weights)
    np.testing.assert_allclose(y, y_ref, atol=2e-5)
    np.testing.assert_allclose(mean, mean_ref, atol=2e-6)
    np.testing.assert_allclose(var, var_ref, rtol=2e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4 * float(np.abs(g_ref).max()))


@pytest.mark.parametrize("first_row", [0.0, 200.0], ids=["typical", "outlier_first_row"])
def test_batch_norm_statistics_of_offset_data(library, first_row):
    """Per-block means and deviations merged in double: a mean 1e4 times the spread, or a first row 200 standard
    deviations out, still gives the variance and a centred gradient to float32 precision."""
    x, gamma, beta, weights = _inputs((51200, 8), mean=1000.0, std=0.1)
    x = tf.tensor_scatter_nd_add(x, [[0]], tf.fill((1, 8), first_row * 0.1))
    (_, mean, var), grads = _grads(lambda *a: kernels.batch_norm(*a, 1e-5), x, gamma, beta, weights)
    x64 = x.numpy().astype("float64")
    np.testing.assert_allclose(var, np.var(x64, axis=0), rtol=1e-5)
    np.testing.assert_allclose(mean, np.mean(x64, axis=0), rtol=1e-7)
    # dx in float64 from the closed form
    inv = 1 / np.sqrt(np.var(x64, axis=0) + 1e-5)
    xhat = (x64 - x64.mean(0)) * inv
    w = weights.numpy().astype("float64")
    dx = gamma.numpy() * inv * (w - w.mean(0) - xhat * (w * xhat).mean(0))
    np.testing.assert_allclose(grads[0], dx, atol=1e-4 * np.abs(dx).max())


def test_non_finite_inputs_give_non_finite_statistics(library):
    """A NaN in a channel shows in its variance (and so in the moving variance), as on the TensorFlow-op path."""
    x, gamma, beta, _ = _inputs((64, 3))
    x = tf.tensor_scatter_nd_update(x, [[5, 1]], [np.nan])
    _, mean, var = kernels.batch_norm(x, gamma, beta, 1e-5, gelu=True)
    assert np.isnan(mean[1]) and np.isnan(var[1]) and np.isfinite(var.numpy()[[0, 2]]).all()


@pytest.mark.parametrize("shape", [(2, 14, 14, 46), (5, 368), (3, 1, 7)])
def test_layer_norm_matches_tensorflow_ops(library, shape):
    x, gamma, beta, weights = _inputs(shape, mean=2.0, std=3.0)
    y, grads = _grads(lambda *a: kernels.layer_norm(*a, 1e-6), x, gamma, beta, weights)
    y_ref, grads_ref = _grads(lambda *a: _train_layer_norm(*a, 1e-6), x, gamma, beta, weights)
    np.testing.assert_allclose(y, y_ref, atol=2e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4 * float(np.abs(g_ref).max()))


def test_bad_shapes_are_refused_with_the_shape(library):
    x, gamma, beta, _ = _inputs((4, 6))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x has shape \[4,6\]: its last axis must be the 5"):
        library.keras_cmt_batch_norm(x, gamma[:5], beta[:5], epsilon=1e-5, gelu=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"per-channel input 2 has shape \[5\]"):
        library.keras_cmt_batch_norm(x, gamma, beta[:5], epsilon=1e-5, gelu=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"beta has shape \[5\]"):
        library.keras_cmt_layer_norm(x, gamma, beta[:5], epsilon=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dy has shape \[3,6\], x \[4,6\]"):
        library.keras_cmt_batch_norm_grad(x[:3], x, gamma, beta, gamma, epsilon=1e-5, gelu=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"per-row input 4 has 3 values for 4 rows"):
        library.keras_cmt_layer_norm_grad(x, x, gamma, tf.zeros(4), tf.ones(3))


def test_empty_batch(library):
    x = tf.zeros((0, 4, 4, 3))
    y, mean, var = kernels.batch_norm(x, tf.ones(3), tf.zeros(3), 1e-5, gelu=True)
    assert y.shape == (0, 4, 4, 3) and np.isnan(mean.numpy()).all() and np.isnan(var.numpy()).all()
    assert kernels.layer_norm(x, tf.ones(3), tf.zeros(3), 1e-6).shape == (0, 4, 4, 3)


def test_model_training_step_uses_the_kernels_and_matches_tensorflow_ops(library, monkeypatch):
    """The micro CMT's logits and every gradient, one training step with the kernels and one without."""
    model = build_micro()
    x = tf.random.stateless_normal((3, 64, 64, 3), seed=(1, 2))
    state = [v.numpy() for v in model.non_trainable_variables]

    def step(x):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(y * tf.range(10, dtype=tf.float32))
        return y, tape.gradient(loss, model.trainable_variables)

    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv(build.DISABLE_ENV, flag)
        for v, value in zip(model.non_trainable_variables, state):
            v.assign(value)
        fn = tf.function(step)
        ops = {op.type for op in fn.get_concrete_function(x).graph.get_operations()}
        assert ({"KerasCmtBatchNorm", "KerasCmtLayerNorm"} <= ops) == (flag == "1")
        results[flag] = fn(x)
    (y, grads), (y_ref, grads_ref) = results["1"], results["0"]
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    scale = max(float(np.abs(g).max()) for g in grads_ref)
    for g, g_ref, v in zip(grads, grads_ref, model.trainable_variables):
        np.testing.assert_allclose(g, g_ref, atol=1e-5 * scale, rtol=1e-3, err_msg=v.path)


def test_disabled_or_other_dtype_takes_tensorflow_ops(library, monkeypatch):
    x, gamma, beta, _ = _inputs((4, 6))
    assert kernels.batch_norm(tf.cast(x, "float16"), gamma, beta, 1e-5) is None
    monkeypatch.setenv(build.DISABLE_ENV, "0")
    assert kernels.batch_norm(x, gamma, beta, 1e-5) is None and kernels.layer_norm(x, gamma, beta, 1e-6) is None


def test_xla_compiled_step_takes_tensorflow_ops(library):
    """`jit_compile` (training's --jit_compile) cannot compile a custom op: those functions get the TF-op path."""
    x, gamma, beta, weights = _inputs((2, 4, 4, 8))

    def step(x, gamma, beta):
        return _grads(lambda *a: _bn_or_reference(*a), x, gamma, beta, weights)

    def _bn_or_reference(x, gamma, beta):
        assert kernels.batch_norm(x, gamma, beta, 1e-5, gelu=True) is None  # inside the XLA function
        return _train_batch_norm(exact_gelu(x, training=True), gamma, beta, 1e-5)

    (y, _, _), grads = tf.function(step, jit_compile=True)(x, gamma, beta)
    (y_ref, _, _), grads_ref = _grads(lambda *a: kernels.batch_norm(*a, 1e-5, gelu=True), x, gamma, beta, weights)
    np.testing.assert_allclose(y, y_ref, atol=2e-5)
    np.testing.assert_allclose(grads[0], grads_ref[0], atol=1e-4)


def test_build_is_atomic_and_failures_fall_back_with_one_warning(tmp_path, monkeypatch):
    target = tmp_path / "k.so"
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(build.KernelBuildError, match="compiling batch_norm.cc, layer_norm.cc failed"):
        build.build(target)
    assert list(tmp_path.iterdir()) == []  # no library, no temporary file left behind

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    build.load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert build.load() is None
        assert len(caught) == 1 and "no C++ compiler" in str(caught[0].message)
    finally:
        build.load.cache_clear()


def test_library_is_cached_per_toolchain(library, monkeypatch, tmp_path):
    path = build.library_path()
    assert path.exists() and path.parent == build.cache_dir()
    monkeypatch.setenv("CXX", "g++ -DKERAS_CMT_OTHER_FLAGS")  # another compiler command: another file
    assert build.library_path() != path
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert pathlib.Path(os.path.commonpath([build.library_path(), tmp_path])) == tmp_path
