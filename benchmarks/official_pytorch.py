"""The official PyTorch CMT for side-by-side benchmarks, imported at run time from a file the user names.

The official code (huawei-noah/Efficient-AI-Backbones, `cmt_pytorch/cmt.py`) is not part of this project: the
benchmarks take `--official PATH/cmt.py` and `load_official(PATH)` imports it as the module `official_cmt`. The file
imports a few names from timm (`IMAGENET_DEFAULT_MEAN/STD`, `load_pretrained`, `DropPath`, `to_2tuple`,
`trunc_normal_`, `resnet26d`, `resnet50d`, `register_model`). Each name that the installed timm still provides
comes from timm; a name it lacks, or every name where timm is missing or does not import (timm needs torchvision,
and the CPU-only torch of the development machine has no matching torchvision), is supplied by a shim here with
timm's behaviour (or an error, for the pretrained-weight loaders the benchmarks never call). None of the shimmed
names changes a timed computation: `DropPath` is the identity at drop-path rate 0, `trunc_normal_` only draws
initial weights. `load_official(...).TIMM_SOURCE` says what was used.

Imports neither TensorFlow nor Keras.
"""

import importlib
import importlib.util
import json
import os
import sys
import types

import numpy as np

from benchmarks import variant_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO_JSON = os.path.join(REPO, "tests", "fixtures", "cmt_micro_seed0.json")
# The official code has a factory function for each released variant, under the same name.
VARIANTS = tuple(name for name, v in variant_table().items() if v.released)


def _timm_shims():
    import torch
    from torch import nn

    class DropPath(nn.Module):  # timm.layers.DropPath: per-sample stochastic depth
        def __init__(self, drop_prob=0.0, scale_by_keep=True):
            super().__init__()
            self.drop_prob = drop_prob
            self.scale_by_keep = scale_by_keep

        def forward(self, x):
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1.0 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            if keep > 0.0 and self.scale_by_keep:
                mask.div_(keep)
            return x * mask

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (list, tuple)) else (x, x)

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return torch.nn.init.trunc_normal_(tensor, mean, std, a, b)

    def unavailable(name):
        def fail(*args, **kwargs):
            raise NotImplementedError(f"{name} is a benchmark shim: pretrained timm models are not available here")

        fail.__name__ = name
        return fail

    return {
        "timm.data": {"IMAGENET_DEFAULT_MEAN": (0.485, 0.456, 0.406), "IMAGENET_DEFAULT_STD": (0.229, 0.224, 0.225)},
        "timm.models.helpers": {"load_pretrained": unavailable("load_pretrained")},
        "timm.models.layers": {"DropPath": DropPath, "to_2tuple": to_2tuple, "trunc_normal_": trunc_normal_},
        "timm.models.resnet": {"resnet26d": unavailable("resnet26d"), "resnet50d": unavailable("resnet50d")},
        "timm.models.registry": {"register_model": lambda fn: fn},
    }


def _stub_module(name):
    """An empty module `name` in sys.modules, with stub parents, attached to its parent as timm would be."""
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so that submodules resolve to the stubs
        sys.modules[name] = module
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(_stub_module(parent), child, module)
    return module


def _provide_timm_names():
    """Makes every timm name the official file imports importable; returns a description of what came from where."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's deprecation notices for timm.models.layers and friends
            import timm

        version, reason = timm.__version__, None
    except Exception as error:  # timm missing, or not importable (e.g. no matching torchvision)
        version, reason = None, f"{type(error).__name__}: {error}"
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]
    shimmed = []
    for module_name, names in _timm_shims().items():
        module = None
        if version is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    module = importlib.import_module(module_name)
            except Exception:
                module = None
        if module is None:
            module = _stub_module(module_name)
        for name, shim in names.items():
            if not hasattr(module, name):
                setattr(module, name, shim)
                shimmed.append(f"{module_name}.{name}")
    if version is None:
        return f"shims for all timm names (timm not importable: {reason})"
    return f"timm {version}" + (f", shims for {', '.join(shimmed)}" if shimmed else "")


def load_official(path, module_name="official_cmt"):
    """Imports the official cmt.py at `path` as `module_name` (registered in sys.modules, as timm's
    `register_model` needs); returns the module, with `TIMM_SOURCE` set."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such file; pass --official PATH to the official cmt_pytorch/cmt.py "
            "(huawei-noah/Efficient-AI-Backbones)"
        )
    timm_source = _provide_timm_names()
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    module.TIMM_SOURCE = timm_source
    return module


def build_official(module, variant, image_size, num_classes=1000):
    """The official factory function for `variant` (cmt_ti, cmt_xs, cmt_s, cmt_b) at `image_size`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    return getattr(module, variant)(img_size=image_size, num_classes=num_classes)


def build_official_micro(module):
    """The official model in the micro fixture's configuration (tests/fixtures/cmt_micro_seed0.json)."""
    with open(MICRO_JSON) as f:
        return module.CMT(**json.load(f)["official_CMT_kwargs"])


def randomize_official_like_trained(model, seed=0):
    """The PyTorch counterpart of `benchmarks.trained_like_weights.randomize_like_trained`, in place: BatchNorm and
    LayerNorm scales 1 + 0.1 N(0, 1), their shifts, every convolution / linear bias and BatchNorm running means
    0.05 N(0, 1), running variances U(0.5, 1.5). Returns `model`."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)

    def fill(tensor, values):
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(tensor.shape))

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            shape = tuple(module.running_mean.shape)
            fill(module.running_var, rng.uniform(0.5, 1.5, shape))
            fill(module.running_mean, 0.05 * rng.normal(size=shape))
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and module.weight is not None:
            fill(module.weight, 1.0 + 0.1 * rng.normal(size=tuple(module.weight.shape)))
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.Linear, nn.Conv2d)):
            if module.bias is not None:
                fill(module.bias, 0.05 * rng.normal(size=tuple(module.bias.shape)))
    return model
