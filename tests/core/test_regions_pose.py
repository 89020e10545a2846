"""Pose regions: keypoint formats, the OpenPose picture read back, body-part masks (anydressing_core.regions)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from anydressing_core.errors import AnyDressingError
from anydressing_core.regions import keypoints as kp
from anydressing_core.regions.body import body_unit, slot_masks
from anydressing_core.regions.openpose_image import JOINT_COLOURS, draw_openpose, keypoints_from_openpose
from anydressing_core.synthetic import render_sample

SLOTS = ("upper", "lower", "hat")


def person18(sample_index=3, size=64):
    s = render_sample(sample_index, size, 0, slots=SLOTS)
    return kp.to_body18(s.keypoints), s


def frame_dict(points18, w, h, normalise):
    flat = []
    for x, y, c in points18:
        flat += [x / w, y / h, c] if (normalise and c > 0) else ([x, y, c] if c > 0 else [0.0, 0.0, 0.0])
    return {"people": [{"pose_keypoints_2d": flat, "face_keypoints_2d": None}], "canvas_width": w, "canvas_height": h}


# ---------------------------------------------------------------- POSE_KEYPOINT

@pytest.mark.parametrize("normalise", [True, False])
def test_pose_keypoint_normalised_or_pixels_read_the_same(normalise):
    pts, _ = person18()
    pts[kp.L_WRIST] = 0.0  # missing, written as [0, 0, 0] by comfyui_controlnet_aux
    frame = kp.parse_pose_keypoint([frame_dict(pts, 64, 64, normalise)])
    assert frame.count == 1 and (frame.width, frame.height) == (64, 64)
    got = frame.people[0]
    present = pts[:, 2] > 0
    np.testing.assert_allclose(got[present, :2], pts[present, :2], atol=1e-6)
    assert got[kp.L_WRIST, 2] == 0


def test_pose_keypoint_nested_triples_and_a_bare_frame_dict():
    pts, _ = person18()
    frame = {"people": [{"pose_keypoints_2d": pts.tolist()}], "canvas_width": 64, "canvas_height": 64}
    np.testing.assert_allclose(kp.parse_pose_keypoint(frame).people[0], pts)


def test_body25_and_coco17_map_onto_body18():
    pts, s = person18()
    body25 = np.zeros((25, 3))
    body25[list(kp.FROM_BODY25)] = pts
    np.testing.assert_allclose(kp.to_body18(body25), pts)
    coco = kp.to_body18(s.keypoints)
    shoulders = (coco[kp.R_SHOULDER, :2] + coco[kp.L_SHOULDER, :2]) / 2
    np.testing.assert_allclose(coco[kp.NECK, :2], shoulders)
    with pytest.raises(AnyDressingError, match="13 keypoints"):
        kp.to_body18(np.zeros((13, 3)))


def test_pose_keypoint_refusals_name_the_fix():
    pts, _ = person18()
    with pytest.raises(AnyDressingError, match="POSE_KEYPOINT value"):
        kp.parse_pose_keypoint("not keypoints")
    with pytest.raises(AnyDressingError, match="canvas_width"):
        kp.parse_pose_keypoint([{"people": []}])
    with pytest.raises(AnyDressingError, match="holds no person"):
        kp.parse_pose_keypoint([{"people": [], "canvas_width": 64, "canvas_height": 64}])
    big = pts.copy()
    big[:, :2] *= 4  # pixels of a 256 px picture, canvas says 64
    with pytest.raises(AnyDressingError, match="another size"):
        kp.parse_pose_keypoint([frame_dict(big, 64, 64, normalise=False)])


def test_more_frames_use_the_first_and_say_so(caplog):
    pts, _ = person18()
    other = pts.copy()
    other[:, 0] += 5
    with caplog.at_level(logging.INFO):
        frame = kp.parse_pose_keypoint([frame_dict(pts, 64, 64, False), frame_dict(other, 64, 64, False)])
    np.testing.assert_allclose(frame.people[0], pts)
    assert "2 frames" in caplog.text


# ---------------------------------------------------------------- the OpenPose picture

def test_openpose_picture_reads_back_its_keypoints():
    pts, _ = person18()
    frame = kp.frame_from_points([pts], 64, 64).scaled(512, 512)
    got = keypoints_from_openpose(draw_openpose(frame))
    assert got.count == 1 and (got.width, got.height) == (512, 512)
    assert (got.people[0, :, 2] > 0).all()
    assert np.abs(got.people[0, :, :2] - frame.people[0, :, :2]).max() < 1.5  # pixels of a 512 px picture


def test_openpose_picture_as_a_float_image_with_a_missing_joint_and_hand_points():
    pts, _ = person18()
    pts[kp.L_WRIST] = 0.0
    frame = kp.frame_from_points([pts], 64, 64).scaled(512, 512)
    img = draw_openpose(frame)
    # hand keypoints are drawn in the knee's blue: far from the knee's limbs they must not become the knee
    cv2.circle(img, (30, 30), 4, JOINT_COLOURS[kp.L_KNEE].tolist(), -1)
    got = keypoints_from_openpose(img.astype(np.float32) / 255.0)
    assert got.people[0, kp.L_WRIST, 2] == 0
    assert np.abs(got.people[0, kp.L_KNEE, :2] - frame.people[0, kp.L_KNEE, :2]).max() < 1.5


def test_two_people_are_two_skeletons():
    a, _ = person18(3, 64)
    b = a.copy()
    a[:, 0] = a[:, 0] * 0.45  # squeeze both into their half of a wide canvas
    b[:, 0] = b[:, 0] * 0.45 + 64 * 0.55
    got = keypoints_from_openpose(draw_openpose(kp.frame_from_points([a, b], 64, 64).scaled(1024, 512)))
    assert got.count == 2


def test_a_picture_without_a_skeleton_is_refused():
    with pytest.raises(AnyDressingError, match="no OpenPose skeleton"):
        keypoints_from_openpose(np.zeros((64, 64, 3), np.uint8))
    photo = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)  # a photo, not a skeleton
    with pytest.raises(AnyDressingError, match="no OpenPose skeleton"):
        keypoints_from_openpose(photo)


# ---------------------------------------------------------------- body-part masks

def covered(region, mask):
    """Share of ``mask``'s pixels inside ``region`` (drawn at another size: compared on the mask's pixels)."""
    mask = mask > 0.5
    region = cv2.resize(region.astype(np.float32), mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0.5
    return (mask & region).sum() / max(mask.sum(), 1)


def test_regions_cover_the_garments_of_synthetic_people():
    """On 16 samples each slot's region holds most of its garment and little of the others'."""
    own, other = {s: [] for s in SLOTS}, {s: [] for s in SLOTS}
    for i in range(16):
        pts, s = person18(i, 64)
        masks, reasons = slot_masks(kp.frame_from_points([pts], 64, 64), SLOTS)
        assert reasons == [None, None, None]
        for k, slot in enumerate(SLOTS):
            own[slot].append(covered(masks[k], s.garments[k].mask))
            other[slot] += [covered(masks[k], s.garments[j].mask) for j in range(3) if j != k]
    for slot in SLOTS:
        assert np.mean(own[slot]) > 0.95 and np.mean(other[slot]) < 0.2, (slot, np.mean(own[slot]), np.mean(other[slot]))


def test_hat_is_above_the_ears_and_shoes_at_the_ankles():
    pts, _ = person18(2, 128)
    masks, _ = slot_masks(kp.frame_from_points([pts], 128, 128), ("hat", "shoes", "bag", "dress"))
    assert masks.shape[-2:] == (256, 256)  # drawn at one size whatever the canvas
    pts = pts.copy()
    pts[:, :2] *= 2
    ys = np.nonzero(masks[0])[0]
    ear_y = pts[[kp.R_EAR, kp.L_EAR], 1].mean()
    assert ys.max() <= ear_y + 0.2 * body_unit(pts) and ys.min() < ear_y - 5
    ankle_y = pts[[kp.R_ANKLE, kp.L_ANKLE], 1].min()
    assert np.nonzero(masks[1])[0].min() >= ankle_y - 0.3 * body_unit(pts)
    assert masks[2].any() and masks[3].any()


def test_missing_points_shrink_or_drop_a_region_and_say_why():
    pts, _ = person18(4, 64)
    no_hips = pts.copy()
    no_hips[[kp.R_HIP, kp.L_HIP]] = 0.0
    masks, reasons = slot_masks(kp.frame_from_points([no_hips], 64, 64), ("upper", "lower", "other"))
    assert reasons[0] is None and masks[0].sum() > 0.6 * slot_masks(kp.frame_from_points([pts], 64, 64), ("upper",))[0][0].sum()
    legs = no_hips.copy()
    legs[[kp.R_KNEE, kp.L_KNEE, kp.R_ANKLE, kp.L_ANKLE]] = 0.0
    masks, reasons = slot_masks(kp.frame_from_points([legs], 64, 64), ("upper", "lower", "other"))
    assert not masks[1].any() and "missing" in reasons[1]
    assert not masks[2].any() and "no body part" in reasons[2]


def test_several_people_give_the_union_of_their_regions():
    a, _ = person18(3, 64)
    b = a.copy()
    a[:, 0] *= 0.45
    b[:, 0] = b[:, 0] * 0.45 + 64 * 0.55
    both, _ = slot_masks(kp.frame_from_points([a, b], 128, 64), ("upper",))
    one, _ = slot_masks(kp.frame_from_points([a], 128, 64), ("upper",))
    assert both[0].sum() > 1.8 * one[0].sum() and (both[0] >= one[0]).all()
