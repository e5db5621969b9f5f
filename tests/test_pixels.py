import numpy as np
import pytest

from aekit import AekitError
from aekit.pixels import PixelScaling


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


def test_tf_and_numpy_scaling_agree():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    scaling = PixelScaling.for_images(images)
    np.testing.assert_allclose(scaling.to_model_tf(images).numpy(), scaling.to_model_numpy(images), rtol=1e-6)


@pytest.mark.parametrize("bad, words", [(np.nan, "NaN"), (-1.0, "span"), (300.0, "span")])
def test_bad_pixels_are_refused(bad, words):
    images = np.zeros((2, 4, 4), np.float32)
    images[1, 2, 2] = bad
    with pytest.raises(AekitError, match=words):
        PixelScaling.for_images(images)
