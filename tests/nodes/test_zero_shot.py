"""Zero-shot AnyDressing inside the real ComfyUI host, with the stock KSampler, on a tiny random SD1.5."""

from __future__ import annotations

import gc

import psutil
import pytest
import torch

from helpers import CountingAttention, Graph, garment_image

RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9), (0.1, 0.8, 0.2)


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


@pytest.fixture(scope="module")
def plain(g):
    return g.sample(g.model)


@pytest.fixture(scope="module")
def two(g):
    return g.features([(RED, "upper"), (BLUE, "lower", "stripes")])


def test_strength_zero_is_bit_identical(g, plain, two):
    for form in ("separate", "joint"):
        assert torch.equal(g.sample(g.apply(two, strength=0.0, form=form)), plain)


def test_outside_percent_range_is_bit_identical(g, plain, two):
    # active only in the last 0.1% of sampling: the 2 ddim steps never reach it
    assert torch.equal(g.sample(g.apply(two, start_percent=0.999, end_percent=1.0)), plain)


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("form", ["separate", "joint"])
def test_garments_change_the_sample(g, plain, count, form):
    specs = [(RED, "upper"), (BLUE, "lower", "stripes"), (GREEN, "hat")][:count]
    feats = g.features(specs)
    assert feats.count == count
    out = g.sample(g.apply(feats, form=form))
    assert torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-3


def test_different_garments_give_different_samples(g):
    a = g.sample(g.apply(g.features([(RED, "upper")])))
    b = g.sample(g.apply(g.features([(BLUE, "upper", "stripes")])))
    assert (a - b).abs().max() > 1e-3


def test_features_cover_every_self_attention_layer(host, g, two):
    common = host.module("nodes.common")
    keys = set(common.attn1_modules(g.model.model.diffusion_model))
    assert set(two.tokens) == keys and len(keys) == 7  # the recommended tiny preset: input, middle, output
    assert two.tokens[("input", 1, 0)].shape[:2] == (2, 64)  # 2 garments, 64x64 px -> 8x8 latent tokens


def test_input_model_is_not_mutated(g, plain, two):
    before = repr(g.model.model_options)
    patched = g.apply(two)
    g.sample(patched)
    assert repr(g.model.model_options) == before
    assert "attn1" in patched.model_options["transformer_options"]["patches_replace"]
    assert torch.equal(g.sample(g.model), plain)


def _replace_call(host, g, feats, batch_order, q, k, v):
    patch = host.module("nodes.patch")
    apply = host.module("nodes.apply")
    patched = apply.apply_dressing(g.model, feats, form="separate")
    key = ("input", 1, 0)
    fn = patched.model_options["transformer_options"]["patches_replace"]["attn1"][key]
    assert isinstance(fn, patch.DressingReplace)
    fn.patch.state.begin(g.model.model.diffusion_model)
    try:
        extra = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": batch_order,
                 "sigmas": torch.tensor([1.0]), "original_shape": [q.shape[0], 4, 8, 8]}
        return fn(q, k, v, extra)
    finally:
        fn.patch.state.end()


def test_cond_uncond_order_does_not_change_result(host, g, two):
    gen = torch.Generator().manual_seed(1)
    qc, qu, kc, ku, vc, vu = (torch.randn(1, 64, 320, generator=gen) for _ in range(6))
    a = _replace_call(host, g, two, [0, 1], torch.cat([qc, qu]), torch.cat([kc, ku]), torch.cat([vc, vu]))
    b = _replace_call(host, g, two, [1, 0], torch.cat([qu, qc]), torch.cat([ku, kc]), torch.cat([vu, vc]))
    c_alone = _replace_call(host, g, two, [0], qc, kc, vc)
    u_alone = _replace_call(host, g, two, [1], qu, ku, vu)
    torch.testing.assert_close(a[0], b[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[0:1], c_alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1:2], u_alone, rtol=1e-5, atol=1e-6)
    # paper policy: the unconditional row is plain self-attention
    from comfy.ldm.modules.attention import optimized_attention
    torch.testing.assert_close(u_alone, optimized_attention(qu, ku, vu, 8), rtol=1e-5, atol=1e-6)


def test_cfg_policy_both_dresses_uncond_too(g, two):
    paper = g.sample(g.apply(two))
    both = g.sample(g.apply(two, cfg_policy="garments in both"))
    assert (paper - both).abs().max() > 1e-4


def test_chain_lora_controlnet_attn2_and_foreign_attn1(host, g, two, tiny_model_names):
    (lora_model,) = host.run("LoraLoaderModelOnly", model=g.model, lora_name=tiny_model_names["lora"], strength_model=1.0)
    ip = CountingAttention()
    foreign = CountingAttention()
    m = lora_model.clone()
    for key in host.module("nodes.common").attn1_modules(m.model.diffusion_model):
        m.set_model_attn2_replace(ip, *key)
    m.set_model_attn1_replace(foreign, "input", 1, 0)
    patched = g.apply(two, model=m)
    shared = host.module("nodes.patch").find_patch(patched)

    (cn,) = host.run("ControlNetLoader", control_net_name=tiny_model_names["controlnet"])
    calls = {"control": 0}
    hook = cn.control_model.register_forward_hook(lambda *a: calls.__setitem__("control", calls["control"] + 1)) \
        if getattr(cn, "control_model", None) is not None else None
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pos, neg = host.run("ControlNetApplyAdvanced", positive=g.pos, negative=g.neg, control_net=cn, image=hint,
                        strength=1.0, start_percent=0.0, end_percent=1.0)
    try:
        out = g.sample(patched, positive=pos, negative=neg)
    finally:
        if hook is not None:
            hook.remove()
    assert torch.isfinite(out).all()
    assert ip.calls > 0, "the attn2 (IP-Adapter style) replace did not fire"
    assert foreign.calls > 0, "the earlier attn1 replace was overwritten instead of chained"
    assert shared.calls > 0, "Dressing-Attention did not fire"
    assert hook is None or calls["control"] > 0, "the ControlNet did not run"
    # the LoRA is really applied: same graph without it differs
    m2 = g.model.clone()
    for key in host.module("nodes.common").attn1_modules(m2.model.diffusion_model):
        m2.set_model_attn2_replace(ip, *key)
    m2.set_model_attn1_replace(foreign, "input", 1, 0)
    no_lora = g.sample(g.apply(two, model=m2), positive=pos, negative=neg)
    assert (out - no_lora).abs().max() > 1e-4


def test_kv_projected_once_per_run_and_nothing_left_behind(host, g, two):
    patched = g.apply(two)
    shared = host.module("nodes.patch").find_patch(patched)
    dm = g.model.model.diffusion_model
    to_k = host.module("nodes.common").attn1_modules(dm)[("input", 1, 0)].to_k
    garment_tokens = two.flat(("input", 1, 0)).shape[1]
    seen = []
    hook = to_k.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        g.sample(patched, steps=3)
    finally:
        hook.remove()
    assert seen.count(garment_tokens) == 1, f"garment K' projected {seen.count(garment_tokens)} times in one run"
    assert shared.state.modules is None and shared.state.kv == {}, "per-run cache outlived the run"


def test_repeated_runs_do_not_grow_memory(g, two):
    proc = psutil.Process()
    patched = g.apply(two)
    for _ in range(3):
        g.sample(patched)
    gc.collect()
    start = proc.memory_info().rss
    for seed in range(12):
        g.sample(patched, seed=seed)
    gc.collect()
    grown = (proc.memory_info().rss - start) / 2**20
    assert grown < 64, f"RSS grew by {grown:.1f} MiB over 12 runs"


def test_attention_maps_node(host, g, two):
    patched = g.apply(two)
    latent = {"samples": g.sample(patched)}
    picture, masks = host.run("AnyDressingAttentionMaps", model=patched, positive=g.pos, latent=latent,
                              at_percent=0.5, seed=0)
    assert masks.shape == (2, 64, 64) and picture.shape[0] == 1 and picture.shape[3] == 3
    assert picture.shape[1] >= 2 * 160, "one row (label, thumbnail, map, scale) per garment"
    assert float(masks.min()) >= 0 and float(masks.sum(0).max()) <= 1.0 + 1e-4
    with pytest.raises(ValueError, match="AnyDressing Apply"):
        host.run("AnyDressingAttentionMaps", model=g.model, positive=g.pos, latent=latent, at_percent=0.5, seed=0)


def test_region_masks_localize_garments(host, g, two):
    regions = torch.zeros(2, 64, 64)
    regions[0, :32] = 1
    regions[1, 32:] = 1
    patched = g.apply(two, form="separate", region_masks=regions)
    latent = {"samples": g.sample(patched)}
    _, masks = host.run("AnyDressingAttentionMaps", model=patched, positive=g.pos, latent=latent, at_percent=0.5, seed=0)
    assert float(masks[0, :24].mean()) > 0.95 and float(masks[1, 40:].mean()) > 0.95


def test_garment_node_batch_and_rgba(host):
    rgba = torch.cat([garment_image(RED), torch.zeros(1, 64, 48, 1)], dim=-1)
    rgba[..., 8:56, 8:40, 3] = 1.0
    (chain,) = host.run("AnyDressingGarment", image=torch.cat([garment_image(BLUE)] * 2), slot="lower", weight=0.5)
    (chain,) = host.run("AnyDressingGarment", image=rgba, slot="hat", weight=1.0, garments=chain)
    assert [x.slot for x in chain.items] == ["lower", "lower", "hat"]
    assert chain.items[2].mask is not None and chain.items[2].mask.sum() == 48 * 32
