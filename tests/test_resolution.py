import math

import pytest

from histomag.errors import ConfigError
from histomag.resolution import Resolution, format_magnification, parse_magnifications


def test_conventional_ratio():
    assert Resolution.from_magnification(40).mpp == pytest.approx(0.25)
    assert Resolution.from_magnification(20).mpp == pytest.approx(0.5)
    assert Resolution.from_mpp(1.0).magnification == pytest.approx(10)


def test_slide_ratio_is_kept():
    r = Resolution.from_magnification(20, power_mpp=20 * 0.499)
    assert r.mpp == pytest.approx(0.499)
    assert Resolution(0.998, 9.98).magnification == pytest.approx(10)


def test_immutable_and_ordered():
    r = Resolution(0.25)
    with pytest.raises(Exception):
        r.mpp = 0.5  # type: ignore[misc]
    assert Resolution(0.25) < Resolution(0.5)


def test_tolerances():
    assert Resolution(0.252).close_to(Resolution(0.25))
    assert not Resolution(0.27).close_to(Resolution(0.25))
    assert Resolution(0.25).at_least(Resolution(0.5))
    assert Resolution(0.254).at_least(Resolution(0.25))  # a 39.4x level still serves 40x
    assert not Resolution(0.5).at_least(Resolution(0.25))
    assert Resolution(0.5).scale_from(Resolution(0.25)) == pytest.approx(2)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_invalid_resolution(bad):
    with pytest.raises(ConfigError):
        Resolution(bad)
    with pytest.raises(ConfigError):
        Resolution.from_magnification(bad)


def test_parse_magnifications():
    assert parse_magnifications("40,20") == [40.0, 20.0]
    assert parse_magnifications("40x, 2.5x") == [40.0, 2.5]
    for bad in ("", "40,abc", "40,40", "-5"):
        with pytest.raises(ConfigError) as e:
            parse_magnifications(bad)
        assert "magnifications=(40, 20)" in str(e.value)


def test_format():
    assert format_magnification(40.0) == "40x"
    assert format_magnification(2.5) == "2.5x"


def test_square_pixels_resamples_the_finer_axis():
    import numpy as np

    from histomag.resolution import is_anisotropic, square_pixels

    img = np.zeros((1536, 1536, 3), np.uint8)
    img[::2] = 200  # horizontal stripes one pixel tall
    out, mpp = square_pixels(img, 0.56, 0.42)
    assert mpp == 0.56
    assert out.shape == (1152, 1536, 3)  # BACH: 1536 rows of 0.42 µm become 1152 rows of 0.56 µm
    assert 90 < out.mean() < 110  # box-averaged, not point-sampled
    same, mpp2 = square_pixels(img, 0.25, 0.2505)
    assert same is img and mpp2 == 0.2505
    assert is_anisotropic(0.25, 0.26) and not is_anisotropic(0.25, 0.2501)
    with pytest.raises(ConfigError):
        square_pixels(img, 0.0, 0.5)
