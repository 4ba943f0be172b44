"""Training recipes: the official CMT ImageNet recipe per variant, and a small-data preset for `digits`.

The ImageNet numbers come from the official cmt_pytorch README and train.py (8 GPUs per run) and sit in each
variant's row of `keras_cmt.VARIANTS`; the `Recipe` type, its defaults and the small-data preset live here, apart
from the command line, so that `--config` files, the README table and the tests read one source.
"""

import dataclasses
from typing import Optional

from keras_cmt import variants


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything the training command needs to know beyond the model, the data and where to write.

    The peak learning rate is `base_lr * batch_size / lr_reference_batch` (the official train.py scales by
    global batch / 512); after `warmup_epochs` of linear warm-up from `warmup_lr` it decays by a cosine to `min_lr`.
    """

    image_size: int
    batch_size: int
    epochs: int
    base_lr: float
    min_lr: float
    warmup_lr: float
    warmup_epochs: float
    weight_decay: float
    drop_path: float
    ema: float  # EMA momentum of the weights; 0 turns EMA off
    lr_reference_batch: int = 512
    label_smoothing: float = 0.1
    randaugment_magnitude: float = 9.0  # timm's m (0..10); 0 turns RandAugment off
    randaugment_magnitude_std: float = 0.5  # timm's mstd: each op's magnitude ~ N(m, mstd), clipped to 0..10
    randaugment_ops: int = 2
    mixup: float = 0.8  # Mixup alpha; 0 turns it off
    cutmix: float = 1.0  # CutMix alpha; 0 turns it off
    mix_switch_prob: float = 0.5  # with both on: chance that a batch gets CutMix rather than Mixup
    random_erasing: float = 0.25  # probability per image
    color_jitter: float = 0.4  # only used when RandAugment is off, as in timm's transform factory
    crop_scale_min: float = 0.08  # smallest area fraction of the random resized crop
    hflip: bool = True
    crop_pct: float = 0.875  # eval: resize the short side to image_size / crop_pct, then centre-crop

    def peak_lr(self, batch_size: Optional[int] = None) -> float:
        return self.base_lr * (batch_size or self.batch_size) / self.lr_reference_batch

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The official recipe of each variant (cmt_pytorch README / train.py), from its row of `keras_cmt.VARIANTS`.
IMAGENET_PRESETS = {name: Recipe(image_size=v.default_size, **v.recipe) for name, v in variants.VARIANTS.items()}

# Small-data preset for `digits` (1,437 training images of 8x8 pixels, upscaled), the README's main job: 20 warm-up
# epochs, Mixup/CutMix, RandAugment and 8% crops do not fit a 10-epoch run on 1,437 images, and flipping changes
# what a digit means. Crops keep 80-100% of the area (the digit fills the image; smaller crops cut strokes off and
# enlarge digits beyond what the un-cropped evaluation shows) and stochastic depth 0.1 (the official CMT-Ti value)
# regularises the 16 blocks. The learning rate is given for a batch of 64 and scales linearly from there.
SMALL_DATA_PRESET = Recipe(
    image_size=64,
    batch_size=64,
    epochs=10,
    base_lr=1e-3,
    lr_reference_batch=64,
    min_lr=1e-5,
    warmup_lr=1e-5,
    warmup_epochs=1,
    weight_decay=0.05,
    drop_path=0.1,
    ema=0.0,
    label_smoothing=0.1,
    randaugment_magnitude=0.0,
    mixup=0.0,
    cutmix=0.0,
    random_erasing=0.0,
    color_jitter=0.0,
    crop_scale_min=0.8,
    hflip=False,
    crop_pct=1.0,
)

PRESET_NAMES = ("imagenet", "small_data")


def get_recipe(model_name: str, preset: str = "auto", dataset: str = "") -> Recipe:
    """The recipe for a variant: `small_data` for `digits` (or when asked), else the variant's ImageNet recipe."""
    if preset == "auto":
        preset = "small_data" if dataset == "digits" else "imagenet"
    if preset == "small_data":
        return SMALL_DATA_PRESET
    if preset != "imagenet":
        raise ValueError(f"--preset={preset!r} is not one of auto, {', '.join(PRESET_NAMES)}")
    if model_name not in IMAGENET_PRESETS:
        raise ValueError(f"--model={model_name!r} is not one of {', '.join(IMAGENET_PRESETS)}")
    return IMAGENET_PRESETS[model_name]
