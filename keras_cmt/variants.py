"""The CMT variant table: one row per variant, the single source of what a variant is.

Each row holds the architecture (as in the official `cmt_pytorch/cmt.py`), its measured size (parameters and
multiply-adds, which tests check against the built graph), its ImageNet training recipe, and, apart from all that,
the facts of its official weights release, if it has one (as timm keeps `default_cfgs` apart from the model).
The builders (`keras_cmt.CMTTiny`, ...), the names and aliases `get_variant` accepts, the keras-hub presets, the
training recipes, the commands' `--help` texts and the benchmarks all derive from `VARIANTS`: a new variant is a new
row.
"""

import dataclasses
from typing import Mapping, Optional, Tuple

STAGE_LETTERS = ("a", "b", "c", "d")  # the official code's stage suffixes (patch_embed_a, blocks_a, relative_pos_a)
SR_RATIOS = (8, 4, 2, 1)
HEAD_CHANNELS = 1280


@dataclasses.dataclass(frozen=True)
class Release:
    """A variant's official ImageNet-1k weights: the file in the release (ggjy/CMT.pytorch, release-v1) and the
    top-1 the official evaluation reports for it."""

    weights_file: str
    top1: float


@dataclasses.dataclass(frozen=True)
class Variant:
    """One CMT configuration: architecture, measured size, training recipe and (optionally) released weights."""

    name: str  # the official registry name: cmt_ti, cmt_xs, cmt_s, cmt_b
    long_name: str  # the spelled-out name (cmt_tiny, cmt_small): an alias, and the keras-hub preset's prefix
    builder_name: str  # the Keras builder: CMTTiny, ...
    default_size: int
    stem_channels: int
    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    mlp_ratio: float
    head_dropout: float
    params: int  # count_params() at default_size with 1000 classes, BatchNorm statistics included
    trainable_params: int
    macs: int  # multiply-accumulates of one image at default_size (keras_cmt.count_macs; tests/test_flops.py)
    # The ImageNet recipe's numbers (`keras_cmt.training.presets.Recipe` fields; image_size is default_size).
    recipe: Mapping[str, float]
    release: Optional[Release] = None

    @property
    def mlp_ratios(self):
        return (self.mlp_ratio,) * 4

    @property
    def released(self):
        return self.release is not None

    @property
    def weights_file(self):
        return self._release().weights_file

    @property
    def top1(self):
        return self._release().top1

    @property
    def preset_name(self):
        """The keras-hub preset of the released weights ("cmt_small_imagenet")."""
        self._release()
        return f"{self.long_name}_imagenet"

    @property
    def aliases(self):
        """Every name `get_variant` resolves to this variant: cmt_small, small, s, cmtsmall, ..."""
        short = self.name.split("_", 1)[1]
        spelled = self.long_name.split("_", 1)[1]
        return tuple(dict.fromkeys((self.name, self.long_name, short, spelled, self.builder_name.lower())))

    def builder_kwargs(self):
        """The `keras_cmt.CMT` arguments that make this variant (the architecture alone)."""
        return {
            "depths": self.depths,
            "embed_dims": self.embed_dims,
            "num_heads": self.num_heads,
            "mlp_ratios": self.mlp_ratios,
            "stem_channels": self.stem_channels,
            "head_dropout": self.head_dropout,
            "default_size": self.default_size,
        }

    def _release(self):
        if self.release is None:
            raise ValueError(f"{self.name} has no released weights (keras_cmt.VARIANTS[{self.name!r}].release).")
        return self.release


_ROWS = (
    Variant(
        name="cmt_ti",
        long_name="cmt_tiny",
        builder_name="CMTTiny",
        default_size=160,
        stem_channels=16,
        embed_dims=(46, 92, 184, 368),
        depths=(2, 2, 10, 2),
        num_heads=(1, 2, 4, 8),
        mlp_ratio=3.6,
        head_dropout=0.1,
        params=9_546_058,
        trainable_params=9_492_426,
        macs=638_904_600,
        # Ti trains without model EMA (--no-model-ema in the official README).
        recipe=dict(
            batch_size=2048,
            epochs=800,
            base_lr=8e-4,
            min_lr=1e-5,
            warmup_lr=1e-7,
            warmup_epochs=20,
            weight_decay=0.05,
            drop_path=0.1,
            ema=0.0,
        ),
        release=Release("cmt_tiny.pth", 79.0),
    ),
    Variant(
        name="cmt_xs",
        long_name="cmt_xs",
        builder_name="CMTXS",
        default_size=192,
        stem_channels=16,
        embed_dims=(52, 104, 208, 416),
        depths=(3, 3, 12, 3),
        num_heads=(1, 2, 4, 8),
        mlp_ratio=3.77,
        head_dropout=0.1,
        params=15_327_720,
        trainable_params=15_247_208,
        macs=1_546_873_472,
        recipe=dict(
            batch_size=2048,
            epochs=400,
            base_lr=7e-4,
            min_lr=2e-5,
            warmup_lr=1e-6,
            warmup_epochs=20,
            weight_decay=0.04,
            drop_path=0.08,
            ema=0.9998,
        ),
        release=Release("cmt_xs.pth", 81.8),
    ),
    Variant(
        name="cmt_s",
        long_name="cmt_small",
        builder_name="CMTSmall",
        default_size=224,
        stem_channels=32,
        embed_dims=(64, 128, 256, 512),
        depths=(3, 3, 16, 3),
        num_heads=(1, 2, 4, 8),
        mlp_ratio=4.0,
        head_dropout=0.1,
        params=26_380_000,
        trainable_params=26_256_160,
        macs=4_031_742_464,
        recipe=dict(
            batch_size=1024,
            epochs=300,
            base_lr=5e-4,
            min_lr=1e-5,
            warmup_lr=1e-7,
            warmup_epochs=20,
            weight_decay=0.05,
            drop_path=0.1,
            ema=0.99996,
        ),
        release=Release("cmt_small.pth", 83.5),
    ),
    Variant(
        name="cmt_b",
        long_name="cmt_base",
        builder_name="CMTBase",
        default_size=256,
        stem_channels=38,
        embed_dims=(76, 152, 304, 608),
        depths=(4, 4, 20, 4),
        num_heads=(1, 2, 4, 8),
        mlp_ratio=4.0,
        head_dropout=0.3,
        params=45_901_480,
        trainable_params=45_715_076,
        macs=9_317_124_096,
        recipe=dict(
            batch_size=512,
            epochs=300,
            base_lr=5e-4,
            min_lr=2e-5,
            warmup_lr=1e-6,
            warmup_epochs=20,
            weight_decay=0.05,
            drop_path=0.25,
            ema=0.99996,
        ),
        release=Release("cmt_base.pth", 84.5),
    ),
)

VARIANTS = {v.name: v for v in _ROWS}
RELEASED = {name: v for name, v in VARIANTS.items() if v.released}
_ALIASES = {alias: v.name for v in _ROWS for alias in v.aliases}


def names_text(quote=False):
    """The variant names for help and error texts: "cmt_ti, cmt_xs, cmt_s, cmt_b"."""
    return ", ".join(repr(name) if quote else name for name in VARIANTS)


def get_variant(name):
    """Looks a variant up by its official name (cmt_ti) or an alias (cmt_tiny, CMTTiny, tiny)."""
    if isinstance(name, Variant):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if _ALIASES.get(key) is None:
        raise ValueError(
            f"Unknown CMT variant {name!r}; expected one of {sorted(VARIANTS)} (or an alias such as "
            f"{_ROWS[0].long_name}, {_ROWS[-1].builder_name})."
        )
    return VARIANTS[_ALIASES[key]]
