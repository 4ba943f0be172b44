"""The CMT variant table: one row per released model, as in the official `cmt_pytorch/cmt.py`.

Kept apart from the builder so the training presets, the TFLite converter and the command line read the same
numbers. `top1` is the ImageNet-1k top-1 of the official release weights (ggjy/CMT.pytorch, release-v1).
"""

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Variant:
    """One CMT configuration and the facts about its released weights."""

    name: str  # the official registry name: cmt_ti, cmt_xs, cmt_s, cmt_b
    builder_name: str  # the Keras builder: CMTTiny, ...
    default_size: int
    stem_channels: int
    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    mlp_ratio: float
    head_dropout: float
    top1: float
    weights_file: str  # file name in the official release
    params: int  # count_params() at default_size with 1000 classes, BatchNorm statistics included
    trainable_params: int
    macs: int  # multiply-accumulates of one image at default_size (keras_cmt.count_macs; tests/test_flops.py)

    @property
    def mlp_ratios(self):
        return (self.mlp_ratio,) * 4


STAGE_LETTERS = ("a", "b", "c", "d")  # the official code's stage suffixes (patch_embed_a, blocks_a, relative_pos_a)
SR_RATIOS = (8, 4, 2, 1)
HEAD_CHANNELS = 1280

VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "cmt_ti",
            "CMTTiny",
            160,
            16,
            (46, 92, 184, 368),
            (2, 2, 10, 2),
            (1, 2, 4, 8),
            3.6,
            0.1,
            79.0,
            "cmt_tiny.pth",
            9_546_058,
            9_492_426,
            638_904_600,
        ),
        Variant(
            "cmt_xs",
            "CMTXS",
            192,
            16,
            (52, 104, 208, 416),
            (3, 3, 12, 3),
            (1, 2, 4, 8),
            3.77,
            0.1,
            81.8,
            "cmt_xs.pth",
            15_327_720,
            15_247_208,
            1_546_873_472,
        ),
        Variant(
            "cmt_s",
            "CMTSmall",
            224,
            32,
            (64, 128, 256, 512),
            (3, 3, 16, 3),
            (1, 2, 4, 8),
            4.0,
            0.1,
            83.5,
            "cmt_small.pth",
            26_380_000,
            26_256_160,
            4_031_742_464,
        ),
        Variant(
            "cmt_b",
            "CMTBase",
            256,
            38,
            (76, 152, 304, 608),
            (4, 4, 20, 4),
            (1, 2, 4, 8),
            4.0,
            0.3,
            84.5,
            "cmt_base.pth",
            45_901_480,
            45_715_076,
            9_317_124_096,
        ),
    )
}

_ALIASES = {
    "cmt_tiny": "cmt_ti",
    "tiny": "cmt_ti",
    "ti": "cmt_ti",
    "cmttiny": "cmt_ti",
    "xs": "cmt_xs",
    "cmtxs": "cmt_xs",
    "cmt_small": "cmt_s",
    "small": "cmt_s",
    "s": "cmt_s",
    "cmtsmall": "cmt_s",
    "cmt_base": "cmt_b",
    "base": "cmt_b",
    "b": "cmt_b",
    "cmtbase": "cmt_b",
}


def get_variant(name):
    """Looks a variant up by its official name (cmt_ti) or an alias (cmt_tiny, CMTTiny, tiny)."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown CMT variant {name!r}; expected one of {sorted(VARIANTS)} "
            f"(or an alias such as cmt_tiny, CMTSmall)."
        )
    return VARIANTS[key]
