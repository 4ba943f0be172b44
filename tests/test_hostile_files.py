"""Hostile and broken weight files: a file can do nothing but fail to load, with one line naming it and the cause.

- The issue's report, reproduced: hand-edited tensor records (a valid zip and pickle, only a size, stride or
  storage offset changed) used to crash the process (SIGSEGV) or load bytes from outside their storage. Each runs
  in its own subprocess, so a regression fails the test instead of killing the run.
- `.weights.h5` files of the wrong dtype or with corrupt data are refused before any variable is assigned.
- A bounded fuzz test: about 300 deterministic mutants (byte flips, truncations, edited tensor records, hostile
  zip directories and pickles, edited HDF5 datasets, mutated release files served to weights="imagenet"), run in
  two worker processes (tests/fixtures/hostile/fuzz_driver.py names any case that crashes or hangs one). Each
  must load or raise the loader's own error, in one line naming the file, and leave the weights cache as it was.

TensorFlow run only (unmarked): the reader is pure NumPy and the fuzz is bounded in time for CI.
"""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

HOSTILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hostile")
sys.path.insert(0, HOSTILE)

import fuzz_driver  # noqa: E402
import mutations  # noqa: E402
import records  # noqa: E402
from records import Record, Storage  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Reads one checkpoint with the reader alone (numpy only) and prints what happened as JSON.
_READ_ONE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("reader", "keras_cmt/weights/torch_checkpoint.py")
reader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reader)
try:
    state = reader.select_state_dict(reader.read_torch_checkpoint(sys.argv[1]), source=sys.argv[1])
    print(json.dumps({"outcome": "loaded",
                      "values": {k: [v.dtype.str, v.shape, v.ravel().tolist()] for k, v in state.items()}}))
except reader.CheckpointError as e:
    print(json.dumps({"outcome": "error", "message": str(e)}))
"""


def _read_in_subprocess(path):
    result = subprocess.run(
        [sys.executable, "-c", _READ_ONE, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=fuzz_driver.worker_env(),
    )
    assert result.returncode == 0, f"the reader died (return code {result.returncode}): {result.stderr[-800:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _storage():
    return Storage("0", np.arange(16, dtype="<f4").tobytes())


# Each used to load or crash (the second column: what the reader did before it validated records).
REPORTED = {
    # sum((size-1)*stride) = 0 passed the old bound check; the view reached 2**40 elements away: SIGSEGV.
    "cancelling-strides": (Record(_storage(), 0, (2, 2), (1 << 40, -(1 << 40))), "stride entry is -1099511627776"),
    # read the 3 floats before the buffer: garbage (NaN) loaded as weights.
    "negative-stride": (Record(_storage(), 0, (4,), (-1,)), "stride entry is -1"),
    # numpy's negative slice wrapped round: loaded elements 12..15 as if they were 0..3.
    "negative-offset": (Record(_storage(), -4, (4,), (1,)), "storage offset of a tensor on storage 0 is -4"),
    # the persistent id declares 1000 elements, the storage holds 16: loaded without a word.
    "numel-lies": (Record(Storage("0", bytes(64), numel=1000), 0, (16,), (1,)), "runs past its storage"),
    # IndexError escaped the loader.
    "scalar-offset-past-end": (Record(_storage(), 100, (), ()), "offset 100 lies outside storage 0"),
    # OverflowError escaped the loader.
    "stride-beyond-int64": (Record(_storage(), 0, (1, 4), (1 << 70, 1)), "not a non-negative 64-bit integer"),
    # tried to allocate 8 GiB (MemoryError escaped, or the machine swapped).
    "stride-0-bomb": (Record(_storage(), 0, (1 << 31,), (0,)), "needs more memory than a CMT checkpoint may take"),
    # AttributeError escaped the loader.
    "storage-is-a-string": (Record("0", 0, (4,), (1,)), "storage is '0', not a storage of the file"),
}


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_hand_edited_tensor_records_fail_cleanly(tmp_path, name):
    record, expected = REPORTED[name]
    path = tmp_path / f"{name}.pth"
    path.write_bytes(records.checkpoint_bytes({"model": {"w": record}}))
    result = _read_in_subprocess(path)
    assert result["outcome"] == "error", result
    message = result["message"]
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_an_honest_record_of_every_form_loads_exactly(tmp_path):
    """Shared storages, a transposed view, stride 0, a scalar, an empty tensor, float16, int64 and bool: what the
    validation must keep loading, element for element."""
    path = tmp_path / "honest.pth"
    path.write_bytes(mutations.make_record_checkpoint({}))
    result = _read_in_subprocess(path)
    assert result["outcome"] == "loaded", result
    for name, expected in mutations.expected_tensors({}).items():
        dtype, shape, values = result["values"][name]
        assert (np.dtype(dtype), tuple(shape)) == (expected.dtype, expected.shape), name
        np.testing.assert_array_equal(np.array(values, dtype=dtype).reshape(shape), expected, err_msg=name)


# --- .weights.h5 --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_h5(tmp_path_factory):
    from conftest import FIXTURES, build_micro

    model = build_micro(weights=str(FIXTURES / "cmt_micro_seed0.pth"))
    path = tmp_path_factory.mktemp("h5") / "micro.weights.h5"
    model.save_weights(path)
    return model, path


def _weights(model):
    return [np.array(v.numpy()) for v in model.weights]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            "retype-int64",
            r"datasets of the wrong type .*stem_conv1 \(layers/conv2d/vars/0 is int64, the model holds "
            r"float32\)",
        ),
        ("retype-float64", r"datasets of the wrong type .*is float64, the model holds float32"),
        ("retype-string", r"datasets of the wrong type .*is \|S6"),
        ("compressed-corrupt", r"corrupt or truncated \.weights\.h5 file \(reading layers/conv2d/vars/0\): "),
        (
            "bias-huge",
            r"its tensors declare 1099512\d+ bytes, more than a CMT's weights take \(at most 4 GiB\); "
            r"refused before reading them",
        ),
        ("reshape-head-scalar", r"does not fit this model .*different: head"),
        ("newline-name", r"different: stem_conv1 \(the file's two linesxxx"),
    ],
)
def test_a_bad_keras_file_is_refused_before_anything_is_assigned(micro_h5, tmp_path, edit, expected):
    import keras_cmt

    model, base = micro_h5
    path = tmp_path / f"{edit}.weights.h5"
    mutations.make_h5({"kind": "h5_edit", "edit": edit}, str(base), str(path))
    before = _weights(model)
    with pytest.raises(ValueError, match=expected) as error:
        keras_cmt.load_weights(model, path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    for value, old in zip(_weights(model), before):
        np.testing.assert_array_equal(value, old)


def test_a_float16_keras_file_loads(micro_h5, tmp_path):
    """float16 holds every value a float16 model saves exactly in float32: accepted (float64 and ints are not)."""
    import keras_cmt

    model, base = micro_h5
    path = tmp_path / "half.weights.h5"
    mutations.make_h5({"kind": "h5_edit", "edit": "retype-float16"}, str(base), str(path))
    keras_cmt.load_weights(model, path)
    kernel = np.array(model.get_layer("stem_conv1").kernel.numpy())
    np.testing.assert_array_equal(kernel, kernel.astype("float16").astype("float32"))


# --- the fuzz ---------------------------------------------------------------------------------------------------

_ERROR_TYPES = {"pth": {"CheckpointError"}, "h5": {"ValueError"}, "release": {"PretrainedWeightsError"}}


def _family(case):
    return {"release": "release"}.get(case["kind"], "h5" if case["kind"].startswith("h5") else "pth")


def _problems(case, result):
    """What is wrong with one case's result, or None."""
    outcome = result.get("outcome")
    if outcome == "loaded":
        return None
    if outcome != "error":
        return f"{outcome}: {result.get('type')}: {result.get('message', '')[:300]} {result.get('detail', '')}"
    message, family = result["message"], _family(case)
    if result["type"] not in _ERROR_TYPES[family]:
        return f"raised {result['type']}, not {_ERROR_TYPES[family]}: {message[:300]}"
    if "\n" in message:
        return f"a message of several lines: {message[:300]!r}"
    if result["path"] not in message:
        return f"the message does not name {result['path']}: {message[:300]}"
    return None


def test_the_driver_names_a_case_that_crashes_or_hangs_its_worker():
    cases = [
        {"id": "ok-0", "kind": "record"},
        {"id": "segfault", "kind": "selftest", "action": "crash"},
        {"id": "ok-1", "kind": "record"},
        {"id": "hang", "kind": "selftest", "action": "hang"},
        {"id": "ok-2", "kind": "truncate", "seed": 1},
    ]
    results, notes = fuzz_driver.run("pth", cases, case_timeout=3, start_timeout=60)
    assert results["segfault"]["outcome"] == "crash" and "-11" in results["segfault"]["message"]
    assert results["hang"]["outcome"] == "hang"
    assert [results[f"ok-{i}"]["outcome"] for i in range(3)] == ["loaded", "loaded", "error"]
    assert len(notes) == 2


def test_fuzz_mutants_load_or_fail_cleanly():
    pth = mutations.pth_cases()
    keras_cases = mutations.h5_cases() + mutations.release_cases()
    assert 250 <= len(pth) + len(keras_cases) <= 400
    outcome, start = {}, time.monotonic()

    def run(mode, cases, case_timeout):
        outcome[mode] = fuzz_driver.run(mode, cases, case_timeout=case_timeout)

    threads = [
        threading.Thread(target=run, args=("pth", pth, 30)),
        threading.Thread(target=run, args=("keras", keras_cases, 120)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - start
    results = {**outcome["pth"][0], **outcome["keras"][0]}
    cases = pth + keras_cases
    counts = {}
    for case in cases:
        key = (_family(case), results[case["id"]]["outcome"])
        counts[key] = counts.get(key, 0) + 1
    print(
        f"\nfuzz: {len(cases)} cases in {seconds:.0f} s: "
        + ", ".join(f"{family} {what} {n}" for (family, what), n in sorted(counts.items()))
    )
    failures = {c["id"]: _problems(c, results[c["id"]]) for c in cases}
    failures = {k: v for k, v in failures.items() if v}
    assert not failures, (
        "\n".join(f"{k}: {v}" for k, v in failures.items()) + "\n" + "\n".join(outcome["pth"][1] + outcome["keras"][1])
    )
    # The mutants reach the loaders' every stage: some load, most are refused, in each family.
    assert counts.get(("pth", "loaded"), 0) >= 10 and counts.get(("pth", "error"), 0) >= 150
    assert counts.get(("h5", "loaded"), 0) >= 3 and counts.get(("h5", "error"), 0) >= 20
    assert counts.get(("release", "loaded"), 0) == 2 and counts.get(("release", "error"), 0) == 8


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stem_conv1.weight", np.zeros((8, 3, 9), "float32"), r"mis-shaped: stem_conv1.weight \(file 8x3x9"),
        ("head.weight", np.zeros((), "float32"), r"mis-shaped: head.weight \(file  vs model 64x10\)"),
        ("stem_conv1.weight", np.zeros((8, 3, 3, 3), "int64"), r"not floating point.*stem_conv1.weight \(int64\)"),
    ],
)
def test_a_pth_tensor_of_another_rank_or_type_names_the_file(tmp_path, key, value, message):
    import keras_cmt
    from conftest import FIXTURES, build_micro
    from keras_cmt.weights.torch_checkpoint import read_torch_checkpoint

    state = dict(read_torch_checkpoint(FIXTURES / "cmt_micro_seed0.pth")["model"])
    state[key] = value
    path = tmp_path / "edited.pth"
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "pretrained"))
    import torch_zip

    torch_zip.write_checkpoint(path, {"model": state})
    model = build_micro()
    before = [np.array(w.numpy()) for w in model.weights]
    with pytest.raises(ValueError, match="edited.pth.*" + message) as error:
        keras_cmt.load_weights(model, path)
    assert "\n" not in str(error.value)
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(model.weights, before))
