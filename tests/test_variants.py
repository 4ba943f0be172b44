"""The variant table and the builders at their default resolutions (full size is the point here)."""

import dataclasses

import keras
import numpy as np
import pytest

import keras_cmt
from keras_cmt import variants


def test_aliases_resolve_to_official_names():
    assert keras_cmt.get_variant("CMTSmall").name == "cmt_s"
    assert keras_cmt.get_variant("cmt-tiny").name == "cmt_ti"
    assert keras_cmt.get_variant("cmt_xs").name == "cmt_xs"


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown CMT variant 'cmt_huge'"):
        keras_cmt.get_variant("cmt_huge")


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_parameter_counts_match_the_official_code(name):
    variant = variants.VARIANTS[name]
    model = keras_cmt.build_model(name)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert model.count_params() == variant.params
    assert trainable == variant.trainable_params
    assert model.input_shape == (None, variant.default_size, variant.default_size, 3)
    assert model.get_layer("head_dropout").rate == variant.head_dropout
    keras.backend.clear_session()


def test_table_matches_the_issue():
    expected = {
        "cmt_ti": (9_546_058, 9_492_426, 160),
        "cmt_xs": (15_327_720, 15_247_208, 192),
        "cmt_s": (26_380_000, 26_256_160, 224),
        "cmt_b": (45_901_480, 45_715_076, 256),
    }
    for name, (params, trainable, size) in expected.items():
        v = variants.VARIANTS[name]
        assert (v.params, v.trainable_params, v.default_size) == (params, trainable, size)


def test_every_row_has_its_builder_names_recipe_and_preset():
    """What derives from the table: a new row gets all of it without another file changing."""
    from keras_cmt.hub import cmt_presets
    from keras_cmt.training import presets

    for v in variants.VARIANTS.values():
        builder = getattr(keras_cmt, v.builder_name)
        assert builder.__name__ == v.builder_name and v.builder_name in keras_cmt.__all__
        assert f"{v.default_size}x{v.default_size}" in builder.__doc__
        assert all(keras_cmt.get_variant(alias) is v for alias in (*v.aliases, v.builder_name, v.name.upper()))
        recipe = presets.IMAGENET_PRESETS[v.name]
        assert recipe.image_size == v.default_size and recipe.drop_path == v.recipe["drop_path"]
        if v.released:
            assert cmt_presets.PRESETS[v.preset_name]["variant"] == v.name
    assert len(cmt_presets.PRESETS) == len(variants.RELEASED)


def test_a_variant_without_released_weights_builds_but_has_no_imagenet_weights():
    from keras_cmt import cmt

    row = dataclasses.replace(variants.VARIANTS["cmt_ti"], name="cmt_new", builder_name="CMTNew", release=None)
    builder = cmt._variant_builder(row)
    model = builder(input_shape=(64, 64, 3), classes=3)
    assert model.name == "cmt_new" and model.output_shape == (None, 3)
    with pytest.raises(ValueError, match="needs a variant with released weights: one of CMTTiny, CMTXS"):
        builder(weights="imagenet")
    with pytest.raises(ValueError, match="cmt_new has no released weights"):
        row.weights_file
    keras.backend.clear_session()
