"""Garment preprocessing: modes, masks, crop, pad, resize."""

import numpy as np
import pytest

from anydressing_core.errors import AnyDressingError
from anydressing_core.garments import (
    MAX_GARMENTS,
    Garment,
    GarmentList,
    auto_mask,
    fit_mask,
    pad_to_aspect,
    prepare_garment,
    to_rgb_alpha,
)


def shirt(h=120, w=80, color=(0.8, 0.1, 0.1), bg=1.0):
    img = np.full((h, w, 3), bg, dtype=np.float32)
    img[20:100, 10:50] = color  # off-centre, so cropping must move it
    return img


def test_grey_and_rgba_become_rgb_with_alpha():
    rgb, alpha = to_rgb_alpha(np.full((32, 32, 1), 0.5, dtype=np.float32))
    assert rgb.shape == (32, 32, 3) and alpha is None
    rgba = np.concatenate([shirt(), np.zeros((120, 80, 1), np.float32)], axis=2)
    rgba[20:100, 10:50, 3] = 1.0
    rgb, alpha = to_rgb_alpha(rgba)
    assert rgb.shape == (120, 80, 3) and alpha.sum() == 80 * 40


def test_uint8_is_scaled():
    rgb, _ = to_rgb_alpha(np.full((20, 20, 3), 255, dtype=np.uint8))
    assert rgb.max() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(8, 8, 3), (32, 32, 2), (32, 32, 5), (32,)])
def test_bad_modes_and_sizes_are_refused(shape):
    with pytest.raises(AnyDressingError):
        to_rgb_alpha(np.zeros(shape, np.float32))


def test_auto_mask_finds_garment_on_plain_background():
    m = auto_mask(shirt())
    assert m[60, 30] == 1 and m[5, 5] == 0 and m[60, 70] == 0
    assert 0.9 < m.sum() / (80 * 40) < 1.1


def test_auto_mask_full_frame_texture_is_whole_image():
    rng = np.random.default_rng(0)
    m = auto_mask(rng.random((64, 64, 3), dtype=np.float32))
    assert m.min() == 1


def test_prepare_crops_centres_and_resizes():
    rgb, m = prepare_garment(shirt(), None, 48, 64)
    assert rgb.shape == (64, 48, 3) and m.shape == (64, 48)
    ys, xs = np.nonzero(m > 0.5)
    # the garment fills the frame (cropped) and is centred horizontally
    assert ys.min() <= 4 and ys.max() >= 59
    assert abs((xs.min() + xs.max()) / 2 - 23.5) <= 2
    assert np.allclose(rgb[32, 24], (0.8, 0.1, 0.1), atol=0.05)
    assert np.allclose(rgb[32, 1], 1.0, atol=0.05)  # padding is the plain background


def test_prepare_with_explicit_mask_blanks_outside():
    img = shirt(bg=0.3)
    mask = np.zeros((120, 80), np.float32)
    mask[20:100, 10:50] = 1
    rgb, _ = prepare_garment(img, mask, 64, 64)
    assert np.allclose(rgb[0, 0], 1.0)  # outside the mask the background became white


def test_empty_mask_is_an_error():
    with pytest.raises(AnyDressingError, match="empty"):
        prepare_garment(shirt(), np.zeros((120, 80), np.float32), 64, 64)


def test_mask_of_another_aspect_is_an_error_but_rescale_is_fine():
    with pytest.raises(AnyDressingError, match="aspect"):
        fit_mask(np.ones((64, 64), np.float32), (120, 80))
    assert fit_mask(np.ones((60, 40), np.float32), (120, 80)).shape == (120, 80)


def test_huge_image_is_downscaled_first():
    big = np.ones((6000, 300, 3), dtype=np.float32)
    big[100:5900, 50:250] = (0.1, 0.2, 0.9)
    rgb, m = prepare_garment(big, None, 64, 128)
    assert rgb.shape == (128, 64, 3)
    assert np.allclose(rgb[64, 32], (0.1, 0.2, 0.9), atol=0.05)
    # a 200x5800 strip padded to 1:2 keeps its thin aspect: ~200 / (5800 * 1.08 / 2) of the width
    assert 0.04 < m.mean() < 0.1


def test_size_must_be_multiple():
    with pytest.raises(AnyDressingError):
        prepare_garment(shirt(), None, 50, 64)


def test_pad_to_aspect_centres():
    out = pad_to_aspect(np.ones((10, 10), np.float32), 2.0, 0.0)
    assert out.shape == (10, 20) and out[:, :5].sum() == 0 and out[:, 5:15].min() == 1


def test_garment_list_limit_and_slots():
    g = Garment(image=shirt(), slot="hat")
    with pytest.raises(AnyDressingError):
        Garment(image=shirt(), slot="cape")
    full = GarmentList().appended([g] * MAX_GARMENTS)
    with pytest.raises(AnyDressingError, match=str(MAX_GARMENTS)):
        full.appended([g])
