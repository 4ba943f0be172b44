"""Packaging: the wheel installs one import name, `keras_cmt`, its console scripts work from a fresh virtual
environment, and the core install (`pip install keras-cmt`) needs Keras, NumPy, h5py and Pillow, not TensorFlow.

* The wheel is built from a copy of the checkout (setuptools writes build/ and *.egg-info next to setup.py), offline
  and without build isolation (the installed setuptools), and its file list is checked.
* It is installed (`--no-deps`) into a new venv that sees the package folders of the interpreter running the tests
  (a `.pth` file adds each of its sys.path folders outside the standard library), so TensorFlow, Keras, ... come
  from this environment and nothing is downloaded: its own venv, the system site-packages, a `pip install --user`
  folder, whichever holds them. (`venv --system-site-packages` would not do: made from inside a venv, it exposes the
  base interpreter's packages, not the venv's.) That environment also holds the checkout's editable install, whose
  `__editable__.keras_cmt-*.pth` appends a meta path finder mapping `keras_cmt`, `keras_cmt.training` and
  `keras_cmt.tflite` to this checkout. Appended after the path finder, it does not shadow the wheel's `keras_cmt`,
  but it would answer for any module the wheel lacks, hiding exactly what this test looks for. The venv therefore
  gets a `sitecustomize.py` (run after every .pth) that removes `__editable__` finders and sys.path entries inside
  the checkout: the venv then sees what a user's fresh venv sees. The commands run from a folder outside the
  checkout, without PYTHONPATH.
* The core test runs keras_cmt on JAX and on PyTorch, each in a subprocess where `import tensorflow` fails as if
  it were not installed (tests/fixtures/packaging/core_without_tensorflow.py).
"""

import email.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import FIXTURES, REPO

DIST_NAME = "keras-cmt"
CONSOLE_SCRIPTS = {
    "keras-cmt": "keras_cmt.cli:main",
    "keras-cmt-tflite": "keras_cmt.tflite.convert:main",
    "cmt-train": "keras_cmt.training.train:console_main",
    "cmt-evaluate": "keras_cmt.training.evaluate:console_main",
    "keras-cmt-tflite-benchmark": "keras_cmt.tflite.benchmark:main",
}
CORE_REQUIREMENTS = {"keras", "numpy", "h5py", "pillow"}
# Repository folders that must not become top-level import names.
NOT_TOP_LEVEL = ("training", "tflite", "benchmarks", "tests")
TIMEOUT = 300


def _clean_env(**extra):
    """The environment for the subprocesses: no PYTHONPATH (nothing from the checkout), offline pip, quiet TF."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def _run(command, cwd, env=None, timeout=TIMEOUT):
    result = subprocess.run(command, cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))}: exit {result.returncode}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result


def _requirement_name(requirement):
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _split_requirements(requirements):
    """Requires-Dist entries -> (core names, {extra: names})."""
    core, extras = set(), {}
    for requirement in requirements:
        name = _requirement_name(requirement)
        marker = requirement.partition(";")[2]
        found = re.findall(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if not found:
            assert "extra" not in marker, f"cannot read the marker of {requirement!r}"
            core.add(name)
        for extra in found:
            extras.setdefault(extra, set()).add(name)
    return core, extras


def _check_requirements(requirements, where):
    core, extras = _split_requirements(requirements)
    assert core == CORE_REQUIREMENTS, (
        f"{where}: the core install must need exactly Keras, NumPy, h5py and Pillow; it needs {sorted(core)}"
    )
    tensorflow_like = [n for n in core if n.startswith(("tensorflow", "tf-", "tensorboard", "ai-edge", "tflite"))]
    assert not tensorflow_like, f"{where}: the core install pulls in {tensorflow_like}"
    for extra in ("train", "tflite"):
        assert "tensorflow" in extras.get(extra, set()), f"{where}: the {extra!r} extra must bring TensorFlow"


def _copy_sources(destination):
    """The files git would see (tracked and untracked, not ignored): what a clean checkout builds from."""
    listing = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for relative in filter(None, listing):
        source = REPO / relative
        if source.is_file():  # a tracked file may have just been deleted by someone else
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_sources(root / "src")
    out = root / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "-w",
            str(out),
            str(source),
        ],
        cwd=root,
    )
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


SITECUSTOMIZE = """\
# Written by tests/test_packaging.py: hide the checkout's editable install (a meta path finder from the system
# site-packages' __editable__ .pth, or a sys.path entry inside the checkout) so that this venv behaves as a fresh one.
import os, sys
_repo = {repo!r}
_removed = [f for f in sys.meta_path
            if (getattr(f, "__module__", None) or type(f).__module__ or "").startswith("__editable__")]
sys.meta_path[:] = [f for f in sys.meta_path if f not in _removed]
_removed += [p for p in sys.path
             if "__editable__" in p or (os.path.realpath(p or ".") + os.sep).startswith(_repo + os.sep)]
sys.path[:] = [p for p in sys.path if p not in _removed]
sys.keras_cmt_test_hidden = [repr(f) for f in _removed]
"""


def package_folders():
    """The running interpreter's sys.path folders outside the standard library and the checkout: where its
    packages are, whether it is a venv, the system interpreter or has a user site."""
    import sysconfig

    stdlib = {os.path.realpath(sysconfig.get_path(name)) for name in ("stdlib", "platstdlib")}
    repo = os.path.realpath(REPO)
    folders = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if (
            not os.path.isdir(path)
            or path in folders
            or any(path == s or path.startswith(s + os.sep + "lib-dynload") for s in stdlib)
            or (path + os.sep).startswith(repo + os.sep)
            or path.endswith(".zip")
        ):
            continue
        folders.append(path)
    return folders


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv that sees this environment's packages, with the wheel installed; returns (bin, site-packages)."""
    root = tmp_path_factory.mktemp("venv")
    path = root / "venv"
    # --without-pip: the venv's python runs the environment's pip (visible through the .pth below), which installs
    # into the venv; no ensurepip, no download.
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=root)
    bin_dir = path / "bin"
    site = pathlib.Path(
        _run(
            [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root
        ).stdout.strip()
    )
    assert site.is_dir() and site.resolve().is_relative_to(path.resolve()), site
    folders = package_folders()
    assert folders, f"no package folder on {sys.path}"
    # addsitedir, not plain lines: the folders' own .pth files (namespace packages, the editable install) run as
    # they do in this environment; sitecustomize.py then hides the checkout.
    (site / "keras_cmt_test_environment.pth").write_text(f"import site; list(map(site.addsitedir, {folders!r}))\n")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(repo=os.path.realpath(REPO)))
    # --ignore-installed: the editable keras-cmt this environment holds is not this venv's to replace.
    _run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--no-compile",
            str(wheel),
        ],
        cwd=root,
    )
    return bin_dir, site


def test_wheel_holds_only_the_keras_cmt_package(wheel):
    assert re.fullmatch(r"keras_cmt-[0-9][^-]*-py3-none-any\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = [n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")]
        assert len(set(dist_info)) == 1, sorted(set(dist_info))
        dist_info = dist_info[0]
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    outside = [n for n in names if n.split("/")[0] not in ("keras_cmt", dist_info)]
    assert not outside, f"files outside keras_cmt/ and {dist_info}/: {outside}"
    assert top_level == ["keras_cmt"], top_level
    for required in (
        "keras_cmt/__init__.py",
        "keras_cmt/cli.py",
        "keras_cmt/__main__.py",
        "keras_cmt/training/__init__.py",
        "keras_cmt/training/train.py",
        "keras_cmt/training/evaluate.py",
        "keras_cmt/tflite/__init__.py",
        "keras_cmt/tflite/convert.py",
        "keras_cmt/tflite/benchmark.py",
        "keras_cmt/data/imagenet_class_index.json",
    ):
        assert required in names, f"{required} is missing from {wheel.name}"
    # Every module of the three source folders is shipped, at its keras_cmt.* place.
    source = wheel.parent.parent / "src"
    for folder, package in (
        ("keras_cmt", "keras_cmt"),
        ("training", "keras_cmt/training"),
        ("tflite", "keras_cmt/tflite"),
    ):
        for module in (source / folder).rglob("*.py"):
            relative = module.relative_to(source / folder)
            if (module.parent / "__init__.py").exists():  # a package's module (results/ scripts are not)
                assert f"{package}/{relative.as_posix()}" in names, f"{folder}/{relative} is not in the wheel"
    for banned in NOT_TOP_LEVEL:
        assert not [n for n in names if n.startswith(f"{banned}/")], f"a top-level {banned}/ is in the wheel"
    native = [n for n in names if n.endswith((".cc", ".h", ".c", ".cpp", ".so", ".pyc"))]
    assert not native, f"native sources or binaries in the wheel: {native}"
    scripts = {}
    section = None
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            name, _, target = line.partition("=")
            scripts[name.strip()] = target.strip()
    assert scripts == CONSOLE_SCRIPTS


def test_wheel_metadata_core_requirements_have_no_tensorflow(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(archive.read(metadata).decode())
    assert message["Name"] == DIST_NAME
    _check_requirements(message.get_all("Requires-Dist") or [], wheel.name)


VENV_CHECK = r"""
import importlib, importlib.metadata as md, json, os, sys, sysconfig
site = os.path.realpath(sysconfig.get_path("purelib"))
import keras_cmt
report = {"prefix": sys.prefix, "site": site, "file": keras_cmt.__file__,
          "hidden": getattr(sys, "keras_cmt_test_hidden", None)}
dist = md.distribution("keras-cmt")
report["dist"] = os.path.realpath(str(dist.locate_file("")))
report["requires"] = dist.requires or []
report["entry_points"] = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
for ep in dist.entry_points:  # loads every console script's module, as the scripts do
    if ep.group == "console_scripts":
        ep.load()
report["modules"] = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                     if name == "keras_cmt" or name.startswith("keras_cmt.")}
report["top_level"] = {}
for name in ("training", "tflite", "benchmarks"):
    try:
        module = importlib.import_module(name)
        report["top_level"][name] = "imported from " + str(getattr(module, "__file__", None) or module.__path__)
    except ModuleNotFoundError as e:
        report["top_level"][name] = "ModuleNotFoundError:" + str(e.name)
print("RESULT " + json.dumps(report))
"""


def _without_log_noise(stderr):
    """stderr without TensorFlow's start-up log lines (absl C++ logging: I0000/W0000/E0000 ...)."""
    noise = re.compile(r"[IWE]\d{4} |WARNING: All log messages before absl|To enable the following")
    return "\n".join(line for line in stderr.splitlines() if not noise.match(line))


def _result(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in:\n{stdout[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_console_scripts_from_the_wheel_in_a_fresh_venv(venv, tmp_path):
    bin_dir, site = venv
    elsewhere = tmp_path / "elsewhere"  # not the checkout, no training/ or tflite/ folder
    elsewhere.mkdir()
    installed = sorted(
        p.name
        for p in site.iterdir()
        if p.name not in ("sitecustomize.py", "keras_cmt_test_environment.pth", "__pycache__")
    )
    assert installed == ["keras_cmt", next(p for p in installed if p.endswith(".dist-info"))], installed
    for script in CONSOLE_SCRIPTS:
        assert (bin_dir / script).is_file(), f"the wheel installed no {script} script"
        shebang = (bin_dir / script).read_text().splitlines()[0]
        assert shebang == f"#!{bin_dir / 'python'}", (script, shebang)
    commands = {
        "check": [str(bin_dir / "python"), "-c", VENV_CHECK],
        "keras-cmt info": [str(bin_dir / "keras-cmt"), "info", "--model", "cmt_ti"],
        **{
            f"{script} --help": [str(bin_dir / script), "--help"]
            for script in ("cmt-train", "cmt-evaluate", "keras-cmt-tflite", "keras-cmt-tflite-benchmark")
        },
    }
    env = _clean_env(KERAS_BACKEND="tensorflow")
    # In parallel: each imports TensorFlow (several seconds).
    processes = {
        name: subprocess.Popen(
            command, cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, command in commands.items()
    }
    results = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results[name] = (process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    failed = [
        f"== {name}: exit {code}\nstdout:\n{out[-1500:]}\nstderr:\n{_without_log_noise(err)[-2500:]}"
        for name, (code, out, err) in results.items()
        if code != 0
    ]
    assert not failed, "\n\n".join(failed)

    report = _result(results["check"][1])
    assert os.path.realpath(report["prefix"]) == os.path.realpath(bin_dir.parent)
    assert report["site"] == os.path.realpath(site)
    assert report["dist"] == report["site"], f"importlib.metadata found keras-cmt at {report['dist']}"
    assert report["entry_points"] == CONSOLE_SCRIPTS
    _check_requirements(report["requires"], "keras-cmt installed from the wheel")
    assert set(report["modules"]) >= {
        "keras_cmt",
        "keras_cmt.cli",
        "keras_cmt.training.train",
        "keras_cmt.training.evaluate",
        "keras_cmt.tflite.convert",
        "keras_cmt.tflite.benchmark",
    }, sorted(report["modules"])
    repo = os.path.realpath(REPO)
    for name, file in report["modules"].items():
        assert file and os.path.realpath(file).startswith(report["site"] + os.sep), (
            f"{name} was imported from {file}, not from the venv's site-packages {report['site']} "
            f"(hidden from the venv: {report['hidden']})"
        )
        assert not os.path.realpath(file).startswith(repo + os.sep), (name, file)
    for name in ("training", "tflite", "benchmarks"):
        assert report["top_level"][name] == f"ModuleNotFoundError:{name}", (
            f"`import {name}` in the venv: {report['top_level'][name]}"
        )

    info = results["keras-cmt info"][1]
    rows = [line.split() for line in info.splitlines() if line.startswith("cmt_ti ")]
    assert len(rows) == 1 and rows[0][1] == "CMTTiny" and rows[0][2] == "9,546,058", info
    # --help lists the command's own options (and exits 0, checked above): a line starting with the option, as
    # absl (`--model_dir: Where ...`) and argparse (`--model MODEL  ...`) print them; `--model_dir=...` in a
    # usage example of the docstring does not count.
    expected_help = {
        "cmt-train --help": ("model_dir", "dataset", "epochs"),
        "cmt-evaluate --help": ("model_path", "dataset", "split"),
        "keras-cmt-tflite --help": ("model", "quantize"),
        "keras-cmt-tflite-benchmark --help": ("threads", "runs"),
    }
    for name, options in expected_help.items():
        text = results[name][1]
        missing = [f"--{option}" for option in options if not re.search(rf"^\s*--{option}(:|\s|$)", text, re.M)]
        assert not missing, f"{name} does not list {missing}:\n{text[-2000:]}"


def test_installed_distribution_metadata():
    """The keras-cmt this environment has installed (the checkout's editable install in development) declares
    what setup.py says: core requirements without TensorFlow and the keras_cmt.* console scripts. A stale install
    (made from an older setup.py) fails here: reinstall with `pip install --no-deps --no-build-isolation -e .`."""
    import importlib.metadata as metadata

    _check_requirements(metadata.requires(DIST_NAME) or [], f"the installed {DIST_NAME}")
    scripts = {
        ep.name: ep.value for ep in metadata.distribution(DIST_NAME).entry_points if ep.group == "console_scripts"
    }
    assert scripts == CONSOLE_SCRIPTS, f"the installed {DIST_NAME} declares the console scripts {scripts}"


def test_core_works_without_tensorflow(tmp_path):
    """The core on JAX and on PyTorch (one subprocess each, side by side) with `import tensorflow` failing."""
    script = FIXTURES / "packaging" / "core_without_tensorflow.py"
    processes = {}
    for backend in ("jax", "torch"):
        env = _clean_env(KERAS_BACKEND=backend)
        if backend == "jax":  # as tests/run.py: the tests time nothing, XLA's optimising passes dominate
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                " --xla_llvm_disable_expensive_passes=true"
            ).strip()
        env["PYTHONPATH"] = str(REPO)  # the checkout's keras_cmt (it is also what the editable install maps to)
        folder = tmp_path / backend
        folder.mkdir()
        processes[backend] = subprocess.Popen(
            [sys.executable, str(script), str(folder)],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for backend, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, (
            f"{backend}: exit {process.returncode}\n{stdout[-3000:]}\n{_without_log_noise(stderr)[-5000:]}"
        )
        report = _result(stdout)
        assert report["backend"] == backend
        assert report["passed"] and report["passed"][0].startswith("the TensorFlow blocker"), report["passed"]
        failures = "\n\n".join(f"== {f['step']}: {f['error']}\n{f['traceback']}" for f in report["failures"])
        assert not report["failures"], f"on {backend} without TensorFlow:\n{failures}"
        assert not report["tensorflow_modules"], report["tensorflow_modules"]
        assert len(report["passed"]) == 12, report["passed"]
