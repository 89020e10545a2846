"""Attention/prompt votes and the per-run region plan (anydressing_core.regions.vote, .plan, .prompt)."""

from __future__ import annotations

import logging

import pytest
import torch

from anydressing_core.attention import dressing_attention, masks_to_tokens
from anydressing_core.errors import AnyDressingError
from anydressing_core.regions import RegionPlan, RegionSource, RegionSpec, region_spec
from anydressing_core.regions.keypoints import frame_from_points, to_body18
from anydressing_core.regions.prompt import parse_region_words, phrase_positions, position_matrix, word_maps
from anydressing_core.regions.vote import MapVote, grid_for
from anydressing_core.synthetic import render_sample

H = W = 8


def halves(strong=0.9):
    """Maps ``[1, 64, 2]``: garment 0 dominant everywhere a little, garment 1 clearly on the right half."""
    m = torch.full((1, H, W, 2), 0.0)
    m[..., 0] = 0.7
    m[..., 1] = 0.3
    m[:, :, W // 2:, 0] = 1 - strong
    m[:, :, W // 2:, 1] = strong
    return m.reshape(1, H * W, 2)


# ---------------------------------------------------------------- the vote

def test_sharpening_stops_the_dominant_garment_from_winning_everywhere():
    vote = MapVote(2, (H, W), smooth=1)
    vote.add(halves(), (H, W))
    vote.step()
    share = vote.shares()[0]  # [2, H, W]
    assert (share[0, :, : W // 2] > 0.5).all() and (share[1, :, W // 2:] > 0.5).all()
    raw = halves().reshape(H, W, 2)
    assert (raw[:, : W // 2, 0] > 0.5).all()  # without the sharpening garment 0 also held the left half ...


def test_ema_commits_over_steps_and_waits_for_warmup():
    vote = MapVote(2, (H, W), momentum=0.5, warmup=2, smooth=1)
    vote.add(halves(0.6), (H, W))
    vote.step()
    assert vote.shares() is None  # one step seen, two wanted
    vote.add(halves(0.6), (H, W))
    vote.step()
    first = vote.shares()[0, 1, 0, -1].item()
    for _ in range(4):
        vote.add(halves(0.6), (H, W))
        vote.step()
    assert abs(vote.shares()[0, 1, 0, -1].item() - first) < 1e-5  # same evidence: stays put
    uniform = torch.full((1, H * W, 2), 0.5)
    vote.add(uniform, (H, W))
    vote.step()  # one uninformative step only halves the lead (EMA), it does not erase it
    assert 0.5 < vote.shares()[0, 1, 0, -1].item() < first


def test_layers_of_another_size_are_resized_and_non_voters_stay_zero():
    vote = MapVote(3, (H, W), voters=[0, 2], smooth=1)
    coarse = torch.rand(2, 16, 3)
    vote.add(coarse, (4, 4))
    vote.add(torch.rand(2, H * W, 3), (H, W))
    vote.step()
    share = vote.shares()
    assert share.shape == (2, 3, H, W) and (share[:, 1] == 0).all()
    torch.testing.assert_close(share.sum(1), torch.ones(2, H, W))
    with pytest.raises(ValueError, match="do not fit"):
        vote.add(torch.rand(1, 10, 3), (H, W))


def test_grid_is_the_finest_level_within_the_budget():
    assert grid_for((64, 64), 1024) == (32, 32)
    assert grid_for((72, 96), 1024) == (18, 24)
    assert grid_for((16, 16), 1024) == (16, 16)


# ---------------------------------------------------------------- the plan

def allowed_of(plan, index):
    """Image ``index``'s allowed masks ``[N, H, W]`` as layers at the plan's grid get them."""
    return plan.tokens(plan.grid, 2)[index].transpose(0, 1).reshape(-1, *plan.grid)


def test_plan_of_given_masks_attends_exactly_like_region_masks():
    """A static plan is the same restriction as Apply's region_masks: identical outputs."""
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 16, 16, generator=gen) > 0.5).float()
    plan = RegionPlan(RegionSpec(RegionSource.POSE, ["a", "b"], pose_masks=masks), (16, 16))
    plan.begin_step()
    q, k, v = (torch.randn(1, 64, 16, generator=gen) for _ in range(3))
    gk, gv = torch.randn(1, 8, 16, generator=gen), torch.randn(1, 8, 16, generator=gen)
    for form in ("separate", "joint"):
        want = dressing_attention(q, k, v, gk, gv, 2, [4, 4], form=form, regions=masks_to_tokens(masks, (8, 8)))
        got = dressing_attention(q, k, v, gk, gv, 2, [4, 4], form=form, regions=plan.tokens((8, 8), 1))
        assert torch.equal(want, got)


def test_unconstrained_garments_are_allowed_everywhere_and_open_rows_see_all():
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 1.0
    plan = RegionPlan(RegionSpec(RegionSource.POSE, ["a", "b", "c"], pose_masks=masks,
                                 notes=[None, None, "no body part"]), (4, 4))
    plan.begin_step()
    allowed = plan.tokens((4, 4), 1)[0].reshape(4, 4, 3)
    assert (allowed[:2, :, 0] == 1).all() and (allowed[:2, :, 1] == 0).all()  # a's region: a (+ unconstrained c)
    assert (allowed[2:] == 1).all()  # in nobody's region: everyone
    assert (allowed[..., 2] == 1).all()


def test_attention_plan_is_rebuilt_once_per_step_and_tiles_over_cfg_chunks():
    plan = RegionPlan(RegionSpec(RegionSource.ATTENTION, ["a", "b"], vote={"smooth": 1}), (H, W))
    plan.begin_step()
    assert plan.wants_garment_maps(H * W) and plan.tokens((H, W), 1) is None  # nothing voted yet
    plan.add_garment_maps(torch.cat([halves(), halves().flip(-1)]), (H, W))  # two images, mirrored votes
    plan.begin_step()
    first = plan.tokens((H, W), 2)
    assert plan.tokens((H, W), 2) is first  # same step, same tensor: built once
    tiled = plan.tokens((H, W), 4)  # garments in both CFG chunks: the images' regions per chunk
    assert tiled.shape == (4, H * W, 2) and torch.equal(tiled[2:], first)
    assert not torch.equal(first[0], first[1])
    picture = plan.picture((16, 16), index=1)
    assert picture.shape == (2, 16, 16)
    assert torch.equal(picture[:, ::2, ::2], allowed_of(plan, 1))  # the second image's own regions
    allowed = first[0].reshape(H, W, 2)
    assert (allowed[:, W // 2:, 1] == 1).all() and (allowed[:, W // 2:, 0] == 0).all()
    plan.add_garment_maps(halves(), (H, W))
    plan.begin_step()
    assert plan.tokens((H, W), 1) is not first



def test_combined_lets_the_vote_decide_where_pose_regions_meet():
    pose = torch.zeros(2, H, W)
    pose[0] = 1.0  # garment 0's pose region covers everything
    pose[1, :, W // 4:] = 1.0  # garment 1's covers the right three quarters: they meet there
    plan = RegionPlan(RegionSpec(RegionSource.COMBINED, ["a", "b"], pose_masks=pose, vote={"smooth": 1}), (H, W))
    plan.begin_step()
    first = plan.tokens((H, W), 1)[0].reshape(H, W, 2)  # no vote yet: the pose regions alone
    assert (first[:, : W // 4] == torch.tensor([1.0, 0.0])).all() and (first[:, W // 4:] == 1).all()
    plan.add_garment_maps(halves(), (H, W))
    plan.begin_step()
    allowed = plan.tokens((H, W), 1)[0].reshape(H, W, 2)
    assert (allowed[:, : W // 4, 0] == 1).all() and (allowed[:, : W // 4, 1] == 0).all()  # only a's pose region
    assert (allowed[:, W // 2:, 1] == 1).all() and (allowed[:, W // 2:, 0] == 0).all()  # both: the vote says b


def test_plan_never_waits_for_the_device(monkeypatch):
    """Per layer and per step the plan only queues tensor ops: no .item(), bool(), .cpu() or .tolist()."""
    plan = RegionPlan(RegionSpec(RegionSource.COMBINED, ["a", "b"], pose_masks=torch.ones(2, H, W)), (H, W))

    def forbidden(*a, **k):
        raise AssertionError("device -> host sync")
    for name in ("item", "__bool__", "cpu", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(3):
        plan.begin_step()
        plan.add_garment_maps(halves(), (H, W))
        plan.add_garment_maps(torch.rand(1, 16, 2), (4, 4))
        plan.tokens((H, W), 2)
        plan.tokens((4, 4), 1)


def test_a_pose_of_another_aspect_ratio_is_refused_before_sampling():
    spec = RegionSpec(RegionSource.POSE, ["a", "b"], pose_masks=torch.ones(2, 64, 64))
    RegionPlan(spec, (8, 8))
    RegionPlan(spec, (16, 16))  # another size, same shape: rescaled
    with pytest.raises(AnyDressingError, match="aspect"):
        RegionPlan(spec, (8, 12))


# ---------------------------------------------------------------- prompt words

def test_region_words_default_to_the_slot_nouns_and_can_be_given():
    words = parse_region_words("", ["upper", "lower", "other"])
    assert "shirt" in words[0] and "jeans" in words[1] and words[2] == []
    assert parse_region_words("scarf, shawl;; beret", ["other", "lower", "hat"]) == [
        ["scarf", "shawl"], list(parse_region_words("", ["lower"])[0]), ["beret"]]
    with pytest.raises(ValueError, match="3 entries for 2 garments"):
        parse_region_words("a; b; c", ["upper", "lower"])


def test_phrase_positions_count_on_the_concatenated_chunks():
    chunks = [[0, 5, 6, 7, 9], [0, 6, 7, 9, 9]]
    assert phrase_positions(chunks, [6, 7]) == [2, 3, 6, 7]
    assert phrase_positions(chunks, [8]) == [] and phrase_positions(chunks, []) == []


def test_word_maps_are_the_attention_mass_on_the_words():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 6, 8, generator=gen), torch.randn(1, 5, 8, generator=gen)
    select = position_matrix([[1, 2], [4], [9]], 5)
    got = word_maps(q, k, 2, select)
    probs = torch.stack([torch.softmax(q[:, :, h * 4:(h + 1) * 4] @ k[0, :, h * 4:(h + 1) * 4].T / 2.0, -1)
                         for h in range(2)]).mean(0)
    torch.testing.assert_close(got[..., 0], probs[..., 1] + probs[..., 2])
    torch.testing.assert_close(got[..., 1], probs[..., 4])
    assert (got[..., 2] == 0).all()  # its only position is past the context


# ---------------------------------------------------------------- region_spec

def test_region_spec_refuses_sources_without_their_input_and_explains_fallbacks(caplog):
    slots = ["upper", "lower", "hat"]
    with pytest.raises(AnyDressingError, match="needs a pose"):
        region_spec("pose", slots)
    with pytest.raises(AnyDressingError, match="prompt's tokens"):
        region_spec("prompt", slots)
    with pytest.raises(AnyDressingError, match="unknown region source"):
        region_spec("elbows", slots)
    assert region_spec("none", slots) is None
    assert region_spec("attention", ["upper"]) is None  # one garment: nothing to separate
    with caplog.at_level(logging.WARNING):
        spec = region_spec("prompt", slots, word_positions=[[3], [], [7]],
                           phrases=parse_region_words("", slots))
    assert spec.unconstrained == [False, True, False] and "trousers" in spec.notes[1]
    assert "has no region" in caplog.text


def test_combined_places_a_garment_without_a_pose_region_by_the_vote():
    pts = to_body18(render_sample(1, 64, 0, slots=("upper", "lower", "hat")).keypoints)
    frame = frame_from_points([pts], 64, 64)
    spec = region_spec("combined", ["upper", "other"], pose=frame)
    assert spec.unconstrained == [False, False] and (spec.pose_masks[1] == 1).all()
    spec = region_spec("pose", ["upper", "other"], pose=frame)
    assert spec.unconstrained == [False, True] and "no body part" in spec.notes[1]


def test_prompt_plan_votes_among_the_garments_with_words_and_frees_the_rest():
    spec = region_spec("prompt", ["upper", "lower", "hat"], word_positions=[[2], [5], []],
                       phrases=parse_region_words("", ["upper", "lower", "hat"]), smooth=1)
    plan = RegionPlan(spec, (H, W))
    assert plan.wants_word_maps(H * W) and not plan.wants_garment_maps(H * W)
    plan.begin_step()
    words = torch.cat([halves(), torch.zeros(1, H * W, 1)], dim=-1)  # the hat's word is not in the prompt
    plan.add_word_maps(words, (H, W))
    plan.begin_step()
    allowed = plan.tokens((H, W), 1)[0].reshape(H, W, 3)
    assert (allowed[:, : W // 2, :2] == torch.tensor([1.0, 0.0])).all()
    assert (allowed[:, W // 2:, :2] == torch.tensor([0.0, 1.0])).all()
    assert (allowed[..., 2] == 1).all()  # no words: unconstrained
