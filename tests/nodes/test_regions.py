"""Automatic regions through the real nodes (AnyDressing Regions -> Apply -> KSampler -> Attention Maps)."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import CountingAttention, Graph

RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9), (0.1, 0.8, 0.2)
SIZE = 64


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


@pytest.fixture(scope="module")
def two(g):
    return g.features([(RED, "upper"), (BLUE, "lower", "stripes")])


@pytest.fixture(scope="module")
def person(host):
    """BODY-18 keypoints of a synthetic person filling a 64x64 picture, and its POSE_KEYPOINT value."""
    core = host.module("anydressing_core.regions.keypoints")
    synthetic = host.module("anydressing_core.synthetic")
    pts = core.to_body18(synthetic.render_sample(3, SIZE, 0, slots=("upper", "lower", "hat")).keypoints)
    flat = [float(v) for x, y, c in pts for v in ((x / SIZE, y / SIZE, 1.0) if c > 0 else (0.0, 0.0, 0.0))]
    return pts, [{"people": [{"pose_keypoints_2d": flat}], "canvas_width": SIZE, "canvas_height": SIZE}]


def regions(host, source="pose", **kw):
    return host.run("AnyDressingRegions", source=source, **kw)[0]


def maps_of(host, g, patched, latent):
    return host.run("AnyDressingAttentionMaps", model=patched, positive=g.pos, latent={"samples": latent},
                    at_percent=0.5, seed=0)


def test_graphs_without_regions_and_source_none_are_unchanged(host, g, two):
    """What an old graph does (no 'regions' input) and what 'none' does: the same bits as before."""
    before = g.sample(g.apply(two))
    assert torch.equal(before, g.sample(g.apply(two, regions=None)))
    assert torch.equal(before, g.sample(g.apply(two, regions=regions(host, "none"))))


def test_pose_regions_keep_each_garment_to_its_body_part(host, g, two, person):
    _, kps = person
    req = regions(host, pose_keypoints=kps)
    patched = g.apply(two, regions=req)
    free = g.apply(two)
    out = g.sample(patched)
    assert not torch.equal(out, g.sample(free))
    body = host.module("anydressing_core.regions.body")
    frame = host.module("anydressing_core.regions.keypoints").parse_pose_keypoint(kps)
    drawn, _ = body.slot_masks(frame, ["upper", "lower"])
    drawn = torch.nn.functional.interpolate(torch.from_numpy(drawn)[None], size=(SIZE, SIZE), mode="area")[0]
    legs = (drawn[1] > 0.5) & (drawn[0] < 0.5)  # lower's region only, at the picture's size
    _, with_regions = maps_of(host, g, patched, out)
    _, without = maps_of(host, g, free, out)
    assert float(with_regions[0][legs].mean()) < 0.5 * float(without[0][legs].mean())


def test_pose_from_an_openpose_picture_gives_the_same_regions(host, g, two, person):
    """The skeleton picture (drawn at 512 px, as a preprocessor would) and the keypoints agree on the regions."""
    pts, kps = person
    op = host.module("anydressing_core.regions.openpose_image")
    frame = host.module("anydressing_core.regions.keypoints").frame_from_points([pts], SIZE, SIZE).scaled(512, 512)
    picture = torch.from_numpy(op.draw_openpose(frame)).float().div(255)[None]
    find = host.module("nodes.patch").find_patch
    to_tokens = host.module("anydressing_core.attention").masks_to_tokens
    from_image = find(g.apply(two, regions=regions(host, pose_image=picture))).region_spec.pose_masks
    from_points = find(g.apply(two, regions=regions(host, pose_keypoints=kps))).region_spec.pose_masks
    a, b = to_tokens(from_image, (16, 16)) > 0.5, to_tokens(from_points, (16, 16)) > 0.5
    assert float((a == b).float().mean()) > 0.97


def test_maps_picture_shows_the_regions_in_force(host, g, two, person):
    _, kps = person
    patched = g.apply(two, regions=regions(host, pose_keypoints=kps))
    latent = g.sample(patched)
    picture, masks = maps_of(host, g, patched, latent)
    plain_picture, _ = maps_of(host, g, g.apply(two), latent)
    rows = plain_picture.shape[1]  # the garments' rows; the regions in force come as a second block under them
    assert picture.shape == (1, 2 * rows, plain_picture.shape[2], 3) and masks.shape == (2, SIZE, SIZE)
    regions_block = picture[:, rows:]
    half = rows // 2  # one row per garment: the two regions differ
    assert not torch.equal(regions_block[:, :half], regions_block[:, half:2 * half])


@pytest.mark.parametrize("source", ["attention", "combined"])
def test_vote_sources_run_once_per_step_and_record_their_regions(host, g, two, person, source):
    _, kps = person
    patched = g.apply(two, form="separate", regions=regions(host, source, pose_keypoints=kps))
    patch = host.module("nodes.patch").find_patch(patched)
    steps = []
    plan_cls = host.module("anydressing_core.regions.plan").RegionPlan
    original = plan_cls.begin_step

    def counting(self):
        steps.append(self.steps)
        return original(self)
    plan_cls.begin_step = counting
    try:
        out = g.sample(patched, steps=4)
    finally:
        plan_cls.begin_step = original
    assert torch.isfinite(out).all()
    assert len(steps) == 4, f"the vote closed {len(steps)} times in 4 steps"
    assert patch.state.auto_regions is None, "the run's plan outlived the run"
    assert patch.last_regions is not None and patch.last_regions.shape == (2, SIZE, SIZE)


def test_prompt_regions_read_the_words_and_chain_with_other_attn2_patches(host, g, two, caplog):
    prompt = "a person wearing a red shirt and blue jeans"
    pos = g.encode(prompt)
    req = regions(host, "prompt", clip=g.clip, prompt=prompt)
    m = g.model.clone()
    ip = CountingAttention()
    for key in host.module("nodes.regions").attn2_modules(m.model.diffusion_model):
        m.set_model_attn2_replace(ip, *key)
    patched = g.apply(two, model=m, regions=req)
    later = []
    patched.set_model_attn2_patch(lambda n, c, v, e: (later.append(1), (n, c, v))[1])  # a patch after ours
    patch = host.module("nodes.patch").find_patch(patched)
    spec = patch.region_spec
    assert all(spec.word_positions) and not any(spec.unconstrained)
    out = g.sample(patched, steps=3, positive=pos)
    assert torch.isfinite(out).all() and ip.calls > 0 and later
    assert patch.last_regions is not None


def test_prompt_without_a_garment_word_falls_back_and_says_so(host, g, two, caplog):
    prompt = "a person wearing a red shirt"
    with caplog.at_level(logging.WARNING):
        patched = g.apply(two, regions=regions(host, "prompt", clip=g.clip, prompt=prompt))
    assert "2 lower has no region" in caplog.text and "trousers" in caplog.text
    latent = g.sample(patched, positive=g.encode(prompt))
    picture, _ = maps_of(host, g, patched, latent)
    plain_picture, _ = maps_of(host, g, g.apply(two), latent)
    assert picture.shape[1] == 2 * plain_picture.shape[1]  # the regions block under the maps: shown, with a fallback


def test_region_words_name_the_garments_when_the_slot_nouns_do_not(host, g, two):
    prompt = "a person in a crimson tunic and indigo culottes"
    default = g.apply(two, regions=regions(host, "prompt", clip=g.clip, prompt=prompt))
    assert all(host.module("nodes.patch").find_patch(default).region_spec.unconstrained)
    named = g.apply(two, regions=regions(host, "prompt", clip=g.clip, prompt=prompt, region_words="tunic; culottes"))
    assert not any(host.module("nodes.patch").find_patch(named).region_spec.unconstrained)


def test_no_region_state_leaks_into_the_input_model(host, g, two, person):
    _, kps = person
    before = repr(g.model.model_options)
    g.sample(g.apply(two, regions=regions(host, "combined", pose_keypoints=kps, clip=g.clip, prompt="a shirt")))
    assert repr(g.model.model_options) == before


@pytest.mark.parametrize("source, per_step", [("pose", False), ("attention", True)])
def test_region_bias_is_built_once_per_level_per_run_or_step(host, g, two, person, monkeypatch, source, per_step):
    """Regions cost nothing per layer call: pose regions build their bias once per level and run, a vote once per
    level and step (3 steps: 3 builds per level), never once per layer."""
    attention = host.module("anydressing_core.attention")
    real = attention._settings_tensors
    built = []
    monkeypatch.setattr(attention, "_settings_tensors", lambda *a, **k: (built.append(a[1]), real(*a, **k))[1])
    _, kps = person
    patched = g.apply(two, form="separate", regions=regions(host, source, pose_keypoints=kps))
    g.sample(patched, steps=3)
    levels = sorted({int(t.shape[1]) for t in two.tokens.values()})
    # a vote's regions change every step, so its step cache starts empty at each of the 3 steps
    want = sorted(levels * 3) if per_step else levels
    assert sorted(built) == want, f"built for token counts {sorted(built)}; levels {levels}"
