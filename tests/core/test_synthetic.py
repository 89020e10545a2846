"""The synthetic generator: seeded, consistent masks/images/captions, manifest on disk."""

import json

import cv2
import numpy as np
import pytest

from anydressing_core import synthetic
from anydressing_core.synthetic import PALETTE, SLOTS, pose_image, render_sample, write_dataset


def test_same_seed_same_sample_and_different_seed_differs():
    a, b = render_sample(3, 32, seed=7), render_sample(3, 32, seed=7)
    assert np.array_equal(a.person, b.person) and a.caption == b.caption
    assert not np.array_equal(a.person, render_sample(3, 32, seed=8).person)


def test_masks_are_disjoint_nonempty_and_show_the_garment_colour():
    for i in range(12):
        s = render_sample(i, 64, seed=1, slots=SLOTS)
        masks = np.stack([g.mask for g in s.garments])
        assert masks.sum(0).max() <= 1, "visible masks overlap"
        for g in s.garments:
            assert g.mask.sum() >= 4, f"sample {i}: {g.spec.slot} is invisible"
            assert g.garment_mask.sum() > g.mask.sum() * 0.5  # in-shop garment is zoomed in
            if g.spec.pattern == "plain":
                inner = cv2.erode(g.mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                if inner.sum() >= 3:
                    err = np.abs(s.person[inner].astype(int) - PALETTE[g.spec.colour]).max(axis=1)
                    assert np.median(err) <= 2


def test_colours_are_distinct_within_a_sample_and_caption_names_them():
    for i in range(20):
        s = render_sample(i, 32, seed=2)
        colours = [g.spec.colour for g in s.garments]
        assert len(set(colours)) == len(colours)
        for g in s.garments:
            assert g.spec.colour in s.caption and g.spec.shape in s.caption


def test_in_shop_image_is_on_a_plain_white_background():
    s = render_sample(0, 48, seed=0, slots=("hat",))
    g = s.garments[0]
    outside = ~cv2.dilate(g.garment_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (g.image[outside] == 255).all()


def test_keypoints_and_pose_image():
    s = render_sample(5, 64, seed=0)
    assert s.keypoints.shape == (17, 2)
    assert (s.keypoints >= 0).all() and (s.keypoints < 64).all()
    # shoulders above hips above knees above ankles (image y grows downwards)
    assert s.keypoints[5, 1] < s.keypoints[11, 1] < s.keypoints[13, 1] < s.keypoints[15, 1]
    p = pose_image(s.keypoints, 64)
    assert p.shape == (64, 64, 3) and p.max() > 0


def test_write_dataset_manifest_round_trip(tmp_path):
    sizes = write_dataset(str(tmp_path), 100, size=32, seed=0, val_fraction=0.1)
    assert sizes == {"train": 90, "val": 10}
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == 90 and len((tmp_path / "val.jsonl").read_text().splitlines()) == 10
    rec = json.loads(lines[0])
    assert rec["caption"].startswith("a mannequin wearing")
    person = cv2.imread(str(tmp_path / rec["person"]))
    assert person.shape == (32, 32, 3)
    for g in rec["garments"]:
        assert g["slot"] in SLOTS
        m = cv2.imread(str(tmp_path / g["mask"]), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(m)) <= {0, 255} and m.max() == 255
        assert cv2.imread(str(tmp_path / g["image"])).shape == (32, 32, 3)
        assert (tmp_path / g["garment_mask"]).is_file()
    # same seed, bigger dataset: the validation split is the same samples
    assert json.loads((tmp_path / "val.jsonl").read_text().splitlines()[0])["caption"] == render_sample(0, 32, 0).caption


@pytest.mark.parametrize("count", [99, 100_001])
def test_count_out_of_range_is_a_clear_error(tmp_path, count):
    with pytest.raises(ValueError, match="100..100000"):
        write_dataset(str(tmp_path), count, size=32)


def test_cli(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path / "d"), "--count", "100", "--size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["train"] == 90


def test_swatch_hides_the_slot_and_keeps_the_person():
    for i in range(6):
        shop = render_sample(i, 32, seed=3, slots=SLOTS)
        swatch = render_sample(i, 32, seed=3, slots=SLOTS, swatch=True)
        assert np.array_equal(shop.person, swatch.person)
        assert [g.spec for g in shop.garments] == [g.spec for g in swatch.garments]
        frames = [g.garment_mask for g in swatch.garments]
        assert all(np.array_equal(frames[0], f) for f in frames[1:])  # one frame for every kind
        assert not np.array_equal(shop.garments[0].garment_mask, shop.garments[2].garment_mask)
        picture = synthetic.in_shop_picture(shop.garments[1].spec, 32, swatch=True)
        assert np.array_equal(picture[0], swatch.garments[1].image) and np.array_equal(picture[1], frames[1])
    periods = {g.spec.slot: set() for g in render_sample(0, 16, seed=0, slots=SLOTS).garments}
    for i in range(40):
        for g in render_sample(i, 16, seed=0, slots=SLOTS).garments:
            periods[g.spec.slot].add(g.spec.period)
    assert periods["hat"] == periods["upper"] == periods["lower"]  # the period does not give the slot away


def _stripe_period(img: np.ndarray) -> float:
    """Mean run length between colour changes along the swatch's stripes, pixels."""
    row = img[img.shape[0] // 2, img.shape[1] // 10 + 2: -img.shape[1] // 10 - 2].astype(int)
    changes = np.nonzero(np.abs(np.diff(row, axis=0)).sum(1) > 60)[0]
    return float(np.diff(changes).mean())


def test_pattern_scale_scales_the_pattern():
    index = next(i for i in range(200) if (lambda g: g.spec.pattern == "stripes" and g.spec.vertical)(
        render_sample(i, 128, seed=0, slots=("upper",)).garments[0]))
    one = render_sample(index, 128, seed=0, slots=("upper",), swatch=True).garments[0]
    two = render_sample(index, 128, seed=0, slots=("upper",), swatch=True, pattern_scale=2.0).garments[0]
    assert two.spec.period == pytest.approx(2 * one.spec.period)
    assert _stripe_period(two.image) == pytest.approx(2 * _stripe_period(one.image), rel=0.15)
    with pytest.raises(ValueError, match="0.25..8"):
        render_sample(0, 32, pattern_scale=0.1)


@pytest.mark.parametrize("size", [16, 17, 20, 24, 32, 64, 256])
def test_random_garments_are_never_too_small_for_the_trainer(size):
    count = 200 if size <= 64 else 12
    for i in range(count):
        s = render_sample(i, size, seed=0)
        assert s.garments, "a sample always wears a garment"
        for g in s.garments:
            assert g.mask.mean() >= synthetic.MIN_GARMENT_FRACTION, (size, i, g.spec.slot)
    # hats are large enough to score from 24 pixels on, even when asked for explicitly
    if size >= 24:
        assert min(render_sample(i, size, seed=0, slots=("hat",)).garments[0].mask.mean() for i in range(count)) \
            >= synthetic.MIN_GARMENT_FRACTION


def test_min_fraction_is_the_trainers_default():
    from anydressing_core.data import DataConfig

    assert synthetic.MIN_GARMENT_FRACTION == DataConfig().min_crop_fraction


@pytest.mark.parametrize("size", [16, 20, 24, 32, 64, 128])
def test_check_data_passes_on_generated_data(tmp_path, capsys, size):
    """The trainer's pre-flight reads every sample the generator writes, at the sizes it accepts.

    Above 128 pixels the garments' share of the image only converges (rasterisation matters less),
    which the test above checks up to 256.
    """
    from anydressing_core.train.__main__ import main as train_main

    write_dataset(str(tmp_path), synthetic.MIN_COUNT, size=size, seed=0)
    small = [f"data.{k}=32" for k in ("height", "width", "garment_height", "garment_width")]
    rc = train_main(["check-data", "--log-level", "WARNING", "dataset.kind=manifest",
                     f"dataset.path={tmp_path / 'train.jsonl'}", *small])
    report = json.loads(capsys.readouterr().out)
    assert report["bad_samples"] == {} and report["samples"] == 90 and rc == 0
