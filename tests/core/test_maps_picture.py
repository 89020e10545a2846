"""The attention-map picture (anydressing_core.maps_picture): readable labels on every garment colour,
its own colour per garment, thumbnails beside the maps, a colour scale, and maps that show where shares differ
even when every share sits near 1/N."""

from __future__ import annotations

import numpy as np
import pytest

from anydressing_core.errors import AnyDressingError
from anydressing_core.maps_picture import PALETTE, contrast_ratio, relative_luminance, render_maps_picture


def crop(image, box):
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


def near_third_maps(h=48, w=36):
    """Three softmax-like shares that sum to 1 and differ by a few hundredths: garment 1 wins on the left,
    garment 2 on the right, garment 3 stays flat."""
    x = np.linspace(0.0, 1.0, w)[None, :].repeat(h, axis=0)
    first = 1 / 3 + 0.04 * (1 - 2 * x)
    second = 1 / 3 - 0.04 * (1 - 2 * x)
    return np.stack([first, second, np.full_like(first, 1 / 3)]).astype(np.float32)


def test_labels_have_at_least_wcag_aa_contrast_on_every_garment_colour():
    maps = np.random.default_rng(0).uniform(0, 0.3, (len(PALETTE), 40, 40)).astype(np.float32)
    pic = render_maps_picture(maps, [f"garment {i}" for i in range(len(PALETTE))])
    assert len(pic.labels) == len(PALETTE)
    for i, box in enumerate(pic.labels):
        region = crop(pic.image, box).reshape(-1, 3)
        colours, counts = np.unique(np.round(region * 255).astype(int), axis=0, return_counts=True)
        background = colours[counts.argmax()] / 255.0
        assert np.allclose(background, PALETTE[i], atol=1 / 255), "the label bar is not in the garment's colour"
        distance = np.abs(region - background).sum(axis=1)
        assert (distance > 0.5).sum() > 20, f"label {i} has no visible text"
        text = region[distance.argmax()]
        assert contrast_ratio(text, background) >= 4.5, (i, background, text)


def test_maps_near_one_third_are_not_flat_where_they_differ():
    pic = render_maps_picture(near_third_maps(), ["upper", "lower", "hat"])
    lum = [relative_luminance(crop(pic.image, box)) for box in pic.maps]
    half = lum[0].shape[1] // 2
    for row, (winner, loser) in ((0, ("left", "right")), (1, ("right", "left"))):
        sides = {"left": lum[row][:, :half].mean(), "right": lum[row][:, half:].mean()}
        assert sides[winner] - sides[loser] > 0.3, (row, sides)
        assert lum[row].max() - lum[row].min() > 0.6, "the map does not use the scale's range"
    assert lum[2].std() < 0.02, "a garment whose share never changes must look uniform"
    assert pic.low == pytest.approx(1 / 3 - 0.04, abs=1e-4) and pic.high == pytest.approx(1 / 3 + 0.04, abs=1e-4)


def test_each_garment_has_its_own_colour_and_a_colour_scale_from_dark_to_light():
    pic = render_maps_picture(near_third_maps(), ["upper", "lower", "hat"])
    hues = []
    for i, box in enumerate(pic.scales):
        bar = crop(pic.image, box)
        column = relative_luminance(bar[:, bar.shape[1] // 2])
        assert column[0] > column[-1] + 0.5, "the scale must run from light (top, high) to dark (bottom, low)"
        assert np.all(np.diff(column) <= 1e-6), "the scale must be monotonic"
        middle = bar[bar.shape[0] // 2, bar.shape[1] // 2]
        assert np.allclose(middle, PALETTE[i], atol=0.03)
        hues.append(tuple(np.round(middle, 2)))
    assert len(set(hues)) == 3
    # the tick values are written beside each scale
    x1, y0 = pic.scales[0][2], pic.scales[0][1]
    beside = pic.image[y0:pic.scales[0][3], x1:]
    assert (relative_luminance(beside) < 0.2).sum() > 30, "no tick labels next to the colour scale"


def test_thumbnails_sit_beside_their_maps():
    red, blue = np.zeros((30, 20, 3), np.float32), np.zeros((50, 50, 3), np.float32)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    pic = render_maps_picture(near_third_maps()[:2], ["upper", "lower"], thumbnails=[red, blue])
    for box, channel, map_box in zip(pic.thumbnails, (0, 2), pic.maps):
        centre = crop(pic.image, box)[box[3] - box[1] >> 1, box[2] - box[0] >> 1]
        assert centre[channel] > 0.95 and centre.sum() < 1.05
        assert box[2] <= map_box[0] and box[1] == map_box[1], "thumbnail must be left of its map, same row"


def test_equal_maps_and_missing_names_still_render():
    pic = render_maps_picture(np.full((2, 8, 8), 0.5, np.float32), ["only one name"])
    assert np.isfinite(pic.image).all() and pic.low == pic.high == 0.5 and len(pic.labels) == 2


@pytest.mark.parametrize("maps, match", [(np.zeros((4, 4)), r"\[N, H, W\]"), (np.full((1, 4, 4), 2.0), "0..1"),
                                         (np.full((1, 4, 4), np.nan), "finite")])
def test_bad_maps_are_refused(maps, match):
    with pytest.raises(AnyDressingError, match=match):
        render_maps_picture(maps, ["x"])
