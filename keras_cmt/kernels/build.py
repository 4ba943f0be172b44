"""Compiles keras_cmt's C++ CPU training kernels against the installed TensorFlow on first use, and caches them.

The kernels (batch_norm.cc, layer_norm.cc) fuse the element-wise chains that dominate a CPU training step; they
are built here rather than shipped as binaries because a TensorFlow custom op must match the TensorFlow it loads
into. The library goes to `<KERAS_HOME or ~/.keras>/kernels/keras_cmt/<key>.so`, where the key hashes the sources,
the TensorFlow version and compile flags, the compiler and the CPU's flags (the code is built with -march=native),
and is written to a temporary name and renamed, so concurrent processes (multi-worker training) never load a
half-written file. Building needs a C++17 compiler (`$CXX`, else `c++`); about 10 s on two cores.

If anything fails (no compiler, a build error, an unloadable library) `load()` returns None with one warning that
names the cause, and the layers use their TensorFlow-op path: same results, slower. `KERAS_CMT_CPU_KERNELS=0`
turns the kernels off.
"""

import functools
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings

SOURCES = ("batch_norm.cc", "layer_norm.cc")
HEADERS = ("row_blocks.h",)
DISABLE_ENV = "KERAS_CMT_CPU_KERNELS"
BUILD_TIMEOUT_S = 600
_HERE = pathlib.Path(__file__).parent


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled or loaded; the message names the step and the cause."""


def enabled():
    """False when `KERAS_CMT_CPU_KERNELS` is 0/false/off."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir():
    """`<KERAS_HOME or ~/.keras>/kernels/keras_cmt` (the temp folder's `.keras` when that is not writable)."""
    from keras_cmt.weights.pretrained import keras_home

    return pathlib.Path(keras_home()) / "kernels" / "keras_cmt"


def _compiler():
    return shlex.split(os.environ.get("CXX") or "c++")


def _cpu_flags():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _command(output):
    import tensorflow as tf

    return (_compiler() + ["-std=c++17", "-shared", "-fPIC", "-O3", "-march=native",
                           "-Wno-deprecated-declarations", "-o", str(output)]
            + [str(_HERE / s) for s in SOURCES] + tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags())


def library_path():
    """Where the library for this TensorFlow, compiler and CPU is cached (it may not exist yet)."""
    import tensorflow as tf

    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((_HERE / name).read_bytes())
    for part in (tf.__version__, tf.sysconfig.get_build_info().get("cpu_compiler", ""), " ".join(_command("")),
                 platform.machine(), _cpu_flags()):
        digest.update(str(part).encode())
    return cache_dir() / f"cmt_cpu_kernels-{digest.hexdigest()[:20]}.so"


def build(path=None):
    """Compiles the kernels to `path` (default `library_path()`) atomically; returns the path."""
    path = pathlib.Path(path or library_path())
    if shutil.which(_compiler()[0]) is None:
        raise KernelBuildError(f"no C++ compiler: {_compiler()[0]!r} not found (set $CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob("*.tmp"):  # left by a build that was killed; a live one is minutes old at most
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            result = subprocess.run(_command(tmp), capture_output=True, text=True, check=False,
                                    timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise KernelBuildError(f"compiling {', '.join(SOURCES)} took over {BUILD_TIMEOUT_S} s") from None
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            raise KernelBuildError(f"compiling {', '.join(SOURCES)} failed: {(errors or ['no output'])[0].strip()}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.lru_cache(maxsize=None)
def load():
    """The loaded op library (`tf.load_op_library`), built first if needed; None (one warning) if unavailable."""
    import tensorflow as tf

    try:
        path = library_path()
        if not path.exists():
            build(path)
        try:
            return tf.load_op_library(str(path))
        except tf.errors.OpError:  # a damaged cache entry: build it again once
            return tf.load_op_library(str(build(path)))
    except (KernelBuildError, OSError, tf.errors.OpError) as error:
        warnings.warn(f"keras_cmt: fused CPU training kernels unavailable ({error}); training uses TensorFlow ops "
                      f"(same results, slower). Set {DISABLE_ENV}=0 to silence this.", RuntimeWarning, stacklevel=2)
        return None
