"""Bad input to automatic regions (docs/BAD_INPUT.md, ids R..): refused before heavy work with a message that names
the fix, or accepted with a fallback the log and the maps picture state. Same rules as tests/nodes/test_bad_input.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from helpers import Graph

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)
DOC = Path(__file__).resolve().parents[2] / "docs" / "BAD_INPUT.md"
SIZE = 64


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


@pytest.fixture(scope="module")
def feats(g):
    return g.features([(RED, "upper"), (BLUE, "lower")])


@pytest.fixture(scope="module")
def points(host):
    keypoints = host.module("anydressing_core.regions.keypoints")
    synthetic = host.module("anydressing_core.synthetic")
    return keypoints.to_body18(synthetic.render_sample(5, SIZE, 0, slots=("upper", "lower")).keypoints)


def pose_keypoint(points, width=SIZE, height=SIZE, scale=1.0):
    flat = [float(v) for x, y, c in points for v in ((x * scale, y * scale, 1.0) if c > 0 else (0.0, 0.0, 0.0))]
    return [{"people": [{"pose_keypoints_2d": flat}], "canvas_width": width, "canvas_height": height}]


@pytest.fixture
def heavy(g, monkeypatch):
    """Counts VAE encodes and UNet forwards; the input MODEL's options must be unchanged after the case."""
    calls = {"vae": 0, "unet": 0}
    encode = g.vae.encode
    monkeypatch.setattr(g.vae, "encode", lambda *a, **k: (calls.__setitem__("vae", calls["vae"] + 1), encode(*a, **k))[1])
    hook = g.model.model.diffusion_model.register_forward_pre_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    options = repr(g.model.model_options)
    try:
        yield calls
    finally:
        hook.remove()
    assert repr(g.model.model_options) == options, "a bad input changed the input MODEL"


def refused(heavy, fn, match):
    with pytest.raises(ValueError) as info:
        fn()
    assert type(info.value).__name__ == "AnyDressingError", f"{type(info.value).__name__}: {info.value}"
    assert re.search(match, str(info.value), re.I), str(info.value)
    assert heavy == {"vae": 0, "unet": 0}, f"heavy work ran before the error: {heavy}"


def regions(host, source="pose", **kw):
    return host.run("AnyDressingRegions", source=source, **kw)[0]


def test_r01_pose_image_without_a_person(host, heavy):
    refused(heavy, lambda: regions(host, pose_image=torch.zeros(1, SIZE, SIZE, 3)), "no OpenPose skeleton")
    photo = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    refused(heavy, lambda: regions(host, pose_image=photo), "no OpenPose skeleton.*OpenPose/DWPose preprocessor")
    refused(heavy, lambda: regions(host, pose_image=torch.zeros(SIZE, SIZE, 3)), "IMAGE \\[B, H, W, 3\\]")


def test_r02_keypoints_made_for_an_image_of_another_size(host, heavy, points):
    refused(heavy, lambda: regions(host, pose_keypoints=pose_keypoint(points, scale=8.0)), "another size")


def test_r03_pose_of_another_aspect_ratio_than_the_output(host, g, feats, heavy, points):
    wide = pose_keypoint(points, width=2 * SIZE, height=SIZE)
    patched = g.apply(feats, regions=regions(host, pose_keypoints=wide))
    refused(heavy, lambda: g.sample(patched, steps=1), "aspect.*resize the pose image")


def test_r04_keypoints_that_are_not_keypoints_or_hold_nobody(host, heavy):
    refused(heavy, lambda: regions(host, pose_keypoints="a pose"), "POSE_KEYPOINT value")
    refused(heavy, lambda: regions(host, pose_keypoints=[{"people": [], "canvas_width": 64, "canvas_height": 64}]),
            "holds no person")
    refused(heavy, lambda: regions(host, pose_keypoints=[{"people": []}]), "canvas_width")


def test_r05_a_source_without_its_input(host, g, heavy):
    refused(heavy, lambda: regions(host, "pose"), "needs a pose.*pose_image.*pose_keypoints")
    refused(heavy, lambda: regions(host, "prompt"), "needs the positive prompt")
    refused(heavy, lambda: regions(host, "prompt", clip=g.clip, prompt="  "), "needs the positive prompt")


def test_r06_unknown_source(host, heavy):
    refused(heavy, lambda: regions(host, "elbows"), "unknown region source 'elbows'")


def test_r07_regions_input_of_another_type(host, g, feats, heavy):
    refused(heavy, lambda: g.apply(feats, regions={"source": "pose"}), "must come from AnyDressing Regions")


def test_r08_more_region_word_entries_than_garments(host, g, feats, heavy):
    req = regions(host, "prompt", clip=g.clip, prompt="a shirt and jeans", region_words="shirt; jeans; cap")
    refused(heavy, lambda: g.apply(feats, regions=req), "3 entries for 2 garments")


def test_r09_prompt_without_the_garment_word_falls_back(host, g, feats, caplog):
    """Accepted: the garment without its word has no region (it may bleed); the log and the picture say so."""
    prompt = "a person wearing a red shirt"
    with caplog.at_level(logging.WARNING):
        patched = g.apply(feats, regions=regions(host, "prompt", clip=g.clip, prompt=prompt))
    assert re.search(r"garment 2 lower has no region \(none of its words \(trousers.*\) is in the prompt\)", caplog.text)
    assert "cannot separate them" in caplog.text  # one garment left with words: the prompt vote is off
    spec = host.module("nodes.patch").find_patch(patched).region_spec
    assert spec.unconstrained == [False, True]
    labels = host.module("nodes.regions").used_regions(host.module("nodes.patch").find_patch(patched), (SIZE, SIZE))[1]
    assert labels[1] == "2 lower: no region"
    assert torch.isfinite(g.sample(patched, positive=g.encode(prompt))).all()


def test_r10_more_garments_than_regions(host, g, points, caplog):
    """Accepted: garments the pose cannot place (slot 'other', a second garment of a slot share its region) stay
    unconstrained; the log and the picture say which."""
    three = g.features([(RED, "upper"), (BLUE, "other"), ((0.2, 0.8, 0.2), "upper")])
    with caplog.at_level(logging.WARNING):
        patched = g.apply(three, regions=regions(host, pose_keypoints=pose_keypoint(points)))
    assert "garment 2 other has no region (slot 'other' has no body part)" in caplog.text
    patch = host.module("nodes.patch").find_patch(patched)
    assert patch.region_spec.unconstrained == [False, True, False]
    masks, labels = host.module("nodes.regions").used_regions(patch, (SIZE, SIZE))
    assert labels == ["1 upper: pose", "2 other: no region", "3 upper: pose"]
    assert (masks[1] == 1).all() and torch.equal(masks[0], masks[2])
    assert torch.isfinite(g.sample(patched)).all()


def test_r11_keypoints_of_another_size_with_the_output_shape_are_rescaled(host, g, feats, points):
    """Accepted: a pose estimator's canvas is often its detect resolution (512) while the output is smaller."""
    big = pose_keypoint(points, width=8 * SIZE, height=8 * SIZE, scale=8.0)
    a = g.sample(g.apply(feats, regions=regions(host, pose_keypoints=big)))
    b = g.sample(g.apply(feats, regions=regions(host, pose_keypoints=pose_keypoint(points))))
    assert torch.equal(a, b)  # regions are drawn at one size whatever the canvas


def test_r12_region_masks_and_automatic_regions_together(host, g, feats, points, caplog):
    """Accepted: the hand-drawn masks win, and the log says the automatic regions are not used."""
    masks = torch.zeros(2, SIZE, SIZE)
    masks[0, : SIZE // 2] = 1
    masks[1, SIZE // 2:] = 1
    with caplog.at_level(logging.INFO):
        both = g.apply(feats, region_masks=masks, regions=regions(host, pose_keypoints=pose_keypoint(points)))
    assert "region_masks are connected" in caplog.text
    assert torch.equal(g.sample(both), g.sample(g.apply(feats, region_masks=masks)))


def test_catalogue_lists_every_regions_case():
    text = DOC.read_text()
    missing = [f"R{i:02d}" for i in range(1, 13) if f"| R{i:02d} |" not in text]
    assert not missing, f"docs/BAD_INPUT.md lacks {missing}"
