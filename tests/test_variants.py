"""The variant table and the builders at their default resolutions (full size is the point here)."""

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


@pytest.mark.parametrize("name", ["cmt_ti", "cmt_xs", "cmt_s", "cmt_b"])
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
