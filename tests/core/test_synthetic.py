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
