import numpy as np
import pytest
from support import needs_tensorflow

from aekit import AekitError
from aekit.core.pixels import PixelScaling


def test_uint8_is_divided_by_255():
    images = np.array([[0, 51, 255]], np.uint8)
    scaling = PixelScaling.for_images(images)
    assert scaling.divide_by == 255.0
    np.testing.assert_allclose(scaling.to_model_numpy(images), [[0.0, 0.2, 1.0]], atol=1e-7)


def test_float_in_unit_range_passes_unchanged():
    images = np.array([[0.0, 0.25, 1.0]], np.float32)
    scaling = PixelScaling.for_images(images)
    assert scaling.divide_by == 1.0
    np.testing.assert_array_equal(scaling.to_model_numpy(images), images)


def test_float_0_255_is_scaled_like_uint8():
    images = np.array([[0.0, 127.5, 255.0]], np.float64)
    out = PixelScaling.for_images(images).to_model_numpy(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])


@needs_tensorflow
def test_tf_and_numpy_scaling_agree():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    scaling = PixelScaling.for_images(images)
    np.testing.assert_allclose(scaling.to_model_tf(images).numpy(), scaling.to_model_numpy(images), rtol=1e-6)


@pytest.mark.parametrize("bad, words", [(np.nan, "NaN"), (-1.0, "negative"), (300.0, "--pixel-max 300")])
def test_bad_pixels_are_refused(bad, words):
    images = np.zeros((2, 4, 4), np.float32)
    images[1, 2, 2] = bad
    with pytest.raises(AekitError, match=words):
        PixelScaling.for_images(images)


# --- the rule on sources in other units (aekit.core.pixels) ---------------------------------------


@pytest.mark.parametrize(
    "images, fix",
    [
        (np.arange(17, dtype=np.uint8).reshape(1, 17), "--pixel-max 16"),  # 0-16 digits as uint8 PNGs
        (np.arange(17, dtype=np.float32).reshape(1, 17), "--pixel-max 16"),  # 0-16 digits as floats
        (np.linspace(0, 16 / 255, 17, dtype=np.float32).reshape(1, 17), "--pixel-max 0.0627"),  # divided by 255 once too often
        (np.array([[0, 1]], np.uint8), "--pixel-max 1"),  # a 0/1 mask
        (np.array([[0, 4000]], np.uint16), "--pixel-max 4095"),  # a 12-bit sensor
        (np.array([[0, 60000]], np.uint16), "--pixel-max 65535"),  # a 16-bit sensor
    ],
)
def test_a_range_that_is_not_0_255_or_0_1_is_refused_with_the_fix(images, fix):
    with pytest.raises(AekitError, match=fix):
        PixelScaling.for_images(images)


def test_the_fix_works_and_names_the_rule():
    digits = np.arange(17, dtype=np.uint8).reshape(1, 17)
    scaling = PixelScaling.for_images(digits, pixel_max=16)
    assert scaling.divide_by == 16.0 and scaling.pixel_max == 16.0 and "--pixel-max 16" in scaling.describe()
    np.testing.assert_allclose(scaling.to_model_numpy(digits)[0, [0, 8, 16]], [0.0, 0.5, 1.0])
    dark = np.array([[0, 40]], np.uint8)  # really dark 0-255 images: said so with --pixel-max 255
    assert PixelScaling.for_images(dark, pixel_max=255).divide_by == 255.0
    sensor = np.array([[0, 2048, 4095]], np.uint16)
    np.testing.assert_allclose(PixelScaling.for_images(sensor, pixel_max=4095).to_model_numpy(sensor), [[0, 2048 / 4095, 1]])
    with pytest.raises(AekitError, match=r"outside \[0, 16\]"):
        PixelScaling.for_images(np.array([[0, 255]], np.uint8), pixel_max=16)
    assert PixelScaling.from_json(scaling.to_json()) == scaling


def test_the_whole_source_decides_not_one_part():
    bright, dark = np.array([[0, 250]], np.uint8), np.array([[0, 10]], np.uint8)
    assert PixelScaling.for_images(bright, dark).divide_by == 255.0  # a dark validation part of a bright source
    with pytest.raises(AekitError, match="integers and part are floats"):
        PixelScaling.for_images(bright, dark.astype(np.float32))


def test_new_images_for_a_model_are_scaled_by_its_rule_without_the_darkness_test():
    from aekit.core.pixels import PixelRange

    model = PixelScaling(255.0)  # trained on 0-255 images
    night = PixelRange.of(np.array([[0, 12]], np.uint8))
    assert model.for_model(night).divide_by == 255.0  # one dark frame is no evidence of other units
    assert model.for_model(PixelRange.of(np.array([[0.0, 0.5]]))).divide_by == 1.0
    assert model.for_model(PixelRange.of(np.array([[0.0, 200.0]]))).divide_by == 255.0
    digits = PixelScaling(16.0, 16.0)  # trained with --pixel-max 16: new images are in those units
    assert digits.for_model(night).divide_by == 16.0
    with pytest.raises(AekitError, match="--pixel-max"):
        model.for_model(PixelRange.of(np.array([[0, 4000]], np.uint16)))
