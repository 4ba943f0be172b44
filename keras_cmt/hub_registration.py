"""Registers keras_cmt's keras-hub classes (`keras_cmt.hub`) with Keras when keras_hub is imported.

keras-hub's `from_preset` finds a preset's classes in Keras' registry of serializable objects, so they must be
registered before a user's `keras_hub.models.ImageClassifier.from_preset(...)`. Importing keras_hub from
`import keras_cmt` would do that, but it imports TensorFlow too (seconds, on every backend) for every user of
the plain model. Instead: registered at once when keras_hub is already imported, else right after keras_hub's own
import completes (a finder on `sys.meta_path` wraps the loader of the module that is actually executed);
nothing happens where keras_hub is never imported or not installed. A failure to register is a warning: it must
not break `import keras_hub` or `import keras_cmt`.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings


def _register():
    try:
        importlib.import_module("keras_cmt.hub")
    except Exception as e:  # noqa: BLE001 - e.g. an untested keras-hub release
        warnings.warn(f"keras_cmt: could not register the keras-hub classes (keras_cmt.hub): {e}", stacklevel=2)


class _AfterKerasHubImport(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "keras_hub" or self._looking:
            return None
        self._looking = True  # the other finders, not this one, find the real spec
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            remove()  # only once keras_hub is really imported: a mere find_spec probe leaves the hook armed
            _register()

        spec.loader.exec_module = exec_module
        return spec


def remove():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterKerasHubImport)]


def install():
    """Registers now if keras_hub is imported, else once it is."""
    if "keras_hub" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterKerasHubImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasHubImport())
