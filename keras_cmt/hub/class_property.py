"""A read-only property of a class, for keras-hub's class-level attributes (`presets`, `backbone_cls`, ...).

keras-hub declares these with a helper it does not export (`keras_hub.src.utils.python_utils.classproperty`); this
is the same three lines, so keras_cmt's Backbone, Task and preprocessors need nothing private from keras-hub.
"""


class classproperty(property):  # noqa: N801 (named like the `property` it extends)
    """`@classproperty def name(cls): ...`: read on the class (or an instance), computed from the class."""

    def __get__(self, _, owner_cls):
        return self.fget(owner_cls)
