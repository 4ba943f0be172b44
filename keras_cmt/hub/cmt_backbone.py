"""CMT as a keras-hub `FeaturePyramidBackbone`: the plain model's layers (`keras_cmt.cmt.cmt_features`), so the
same weights, plus the stage outputs as `pyramid_outputs` P2..P5 (strides 4, 8, 16, 32) for keras-hub's
detection and segmentation models."""

import os

import keras
from keras_hub.models import FeaturePyramidBackbone

from keras_cmt import cmt, pyramid, variants
from keras_cmt.layers.data_format import standardize_data_format
from keras_cmt.hub import cmt_presets
from keras_cmt.hub.class_property import classproperty


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTBackbone(FeaturePyramidBackbone):
    """CMT from the stem to the head's 1x1 convolution, BatchNorm and swish (the classifier's pooling, dropout and
    dense are `CMTImageClassifier`'s).

    Args:
        depths, embed_dims, num_heads, mlp_ratios: per-stage lists of 4 (`keras_cmt.VARIANTS`).
        stem_channels: width of the three-convolution stem.
        sr_ratios: key/value spatial reduction per stage.
        head_channels: width of the final 1x1 convolution (1280 in the released models).
        qkv_bias: whether the q/k/v projections have a bias.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value (training only).
        position_bias_size: the (height, width) input size the relative-position biases are held at where
            `image_shape` leaves a side None (the size the weights were trained at); they are resized to each
            input's grid at call time. Where `image_shape` fixes a side, the biases are held at that size.
        image_shape: (height, width, 3), sides multiples of 32 or None (any size); (3, height, width) with the
            channels_first image data format.
        data_format: "channels_last" or "channels_first" (default: Keras' image data format).
        dtype: the dtype policy of every layer (e.g. "mixed_bfloat16").
    """

    def __init__(
        self,
        depths,
        embed_dims,
        num_heads,
        mlp_ratios,
        stem_channels,
        sr_ratios=variants.SR_RATIOS,
        head_channels=variants.HEAD_CHANNELS,
        qkv_bias=True,
        drop_path_rate=0.0,
        position_bias_size=(224, 224),
        image_shape=(None, None, 3),
        data_format=None,
        dtype=None,
        **kwargs,
    ):
        data_format = standardize_data_format(data_format)
        cmt.check_stage_lists(
            depths=depths, embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, sr_ratios=sr_ratios
        )
        if isinstance(position_bias_size, int):
            position_bias_size = (position_bias_size, position_bias_size)
        position_bias_size = tuple(int(s) for s in position_bias_size)
        if len(position_bias_size) != 2 or any(s <= 0 or s % 32 for s in position_bias_size):
            raise ValueError(f"position_bias_size must be (height, width), multiples of 32; got {position_bias_size}.")
        image_shape, bias_size = cmt.resolve_input_shape(
            image_shape, None, position_bias_size, data_format, arg_name="image_shape"
        )

        # === Functional model ===
        image_input = keras.layers.Input(shape=image_shape)
        x, stages = cmt.cmt_features(
            image_input,
            depths,
            embed_dims,
            num_heads,
            mlp_ratios,
            stem_channels,
            sr_ratios,
            head_channels,
            qkv_bias,
            drop_path_rate,
            bias_size,
            data_format,
            dtype=dtype,
        )
        super().__init__(inputs=image_input, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.depths = [int(d) for d in depths]
        self.embed_dims = [int(d) for d in embed_dims]
        self.num_heads = [int(h) for h in num_heads]
        self.mlp_ratios = [float(r) for r in mlp_ratios]
        self.stem_channels = int(stem_channels)
        self.sr_ratios = [int(r) for r in sr_ratios]
        self.head_channels = int(head_channels)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.position_bias_size = list(position_bias_size)
        self.image_shape = image_shape
        self.data_format = data_format
        self.pyramid_outputs = {level: stages[name] for level, name in pyramid.PYRAMID_LEVELS.items()}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depths": self.depths,
                "embed_dims": self.embed_dims,
                "num_heads": self.num_heads,
                "mlp_ratios": self.mlp_ratios,
                "stem_channels": self.stem_channels,
                "sr_ratios": self.sr_ratios,
                "head_channels": self.head_channels,
                "qkv_bias": self.qkv_bias,
                "drop_path_rate": self.drop_path_rate,
                "position_bias_size": self.position_bias_size,
                "image_shape": self.image_shape,
                # Saved, unlike keras-hub's own backbones: image_shape's order depends on it, and a preset made in a
                # channels-first session must still build where channels-last is the default.
                "data_format": self.data_format,
            }
        )
        return config

    def load_weights(self, filepath, *args, **kwargs):
        """Keras' `load_weights`, which keras-hub's `from_preset` calls with the preset's model.weights.h5 (through
        its generic classes too): a truncated or corrupt file, or one of another model, fails in one line naming
        it, before any variable is assigned for a damaged file; and a classifier whose task.weights.h5 is missing
        from the preset is refused rather than left with a random head."""
        from keras_cmt.weights import loading

        path = os.fspath(filepath)
        self._cmt_weights_file = path
        task = getattr(self, "_cmt_task", lambda: None)()
        if (
            task is not None
            and not getattr(task, "_cmt_head_loaded", False)
            and os.path.basename(path) in ("model.weights.h5", "model.weights.json")
        ):
            cmt_presets.check_head_weights(os.path.dirname(path), task.num_classes)
        if path.endswith(".h5"):
            loading.check_weights_file(path)
        try:
            return super().load_weights(filepath, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - Keras and h5py raise ValueError, OSError, KeyError, ...
            raise ValueError(
                f"{path}: cannot load it into the CMT backbone (another model's weights?): "
                f"{' '.join(str(e).split())[:240]}"
            ) from None

    @classproperty
    def presets(cls):
        """keras_cmt's named presets ({name: {"metadata": ..., "variant": ...}}), built on first use."""
        return cmt_presets.listing()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `Backbone.from_preset`, plus keras_cmt's named presets (`keras_cmt.hub.PRESETS`, built from
        the official release on first use) and a one-line error for a local directory that is not a CMT preset."""
        path = cmt_presets.resolve(preset, need=cmt_presets.backbone_files(load_weights))
        return super().from_preset(path, load_weights=load_weights, **kwargs)


def backbone_config(variant):
    """The `CMTBackbone` arguments of a released variant ("cmt_ti", "cmt_s", an alias such as "CMTSmall")."""
    v = variants.get_variant(variant)
    return dict(
        depths=list(v.depths),
        embed_dims=list(v.embed_dims),
        num_heads=list(v.num_heads),
        mlp_ratios=list(v.mlp_ratios),
        stem_channels=v.stem_channels,
        position_bias_size=[v.default_size, v.default_size],
    )
