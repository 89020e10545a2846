"""GFE LoRA, GarmentsNet / DressingNet processors and the block-key mapping (tiny diffusers UNets, CPU)."""

import copy

import pytest
import torch

from anydressing_core.attention import sdpa_attention
from anydressing_core.diffusers_model import attn1_modules, build_garments_net, install_dressing_attention
from anydressing_core.errors import AnyDressingError
from anydressing_core.gfe import DAProjections, GFEHooks, GFELoRA
from anydressing_core.keys import diffusers_layer_keys, ldm_unet_config, module_to_key, processor_order

diffusers = pytest.importorskip("diffusers")

from unet_configs import SD_LIKE, XL_LIKE  # noqa: E402  (shared tiny diffusers UNet configs)


def tiny_unet(config=SD_LIKE, seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**config).eval()


def randomize_lora(lora, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("config", [SD_LIKE, XL_LIKE], ids=["sd15-like", "sdxl-like"])
def test_layer_keys_match_the_module_tree_and_processor_order(config):
    unet = tiny_unet(config)
    blocks = [n for n, m in unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"]
    keys = diffusers_layer_keys(unet.config)
    assert sorted(blocks) == sorted(keys)
    assert len(set(keys.values())) == len(keys)
    attn1_in_processor_order = [n[: -len(".attn1.processor")] for n in unet.attn_processors if ".attn1." in n]
    assert processor_order(unet.config) == [keys[n] for n in attn1_in_processor_order]
    name = next(iter(keys))
    assert module_to_key(name + ".attn1.to_q", unet.config) == keys[name]
    cfg = ldm_unet_config(unet.config)
    assert sum(cfg["transformer_depth"]) + sum(cfg["transformer_depth_output"]) + max(cfg["transformer_depth_middle"], 0) \
        == len(keys)


def test_sdxl_like_keys_use_transformer_index():
    keys = set(diffusers_layer_keys(tiny_unet(XL_LIKE).config).values())
    assert ("input", 7, 2) in keys and ("middle", 0, 2) in keys and ("output", 0, 2) in keys
    assert not any(k[0] == "input" and k[1] in (1, 2) for k in keys)  # first level has no attention


def test_batched_slot_delta_equals_per_row_loop():
    lora = GFELoRA({("input", 1, 0): 8}, ["upper", "lower", "hat"], rank=2, alpha=4)
    randomize_lora(lora)
    x = torch.randn(4, 5, 8)
    ids = lora.slot_ids(["hat", "upper", "hat", "lower"])
    got = lora.delta(("input", 1, 0), "k", x, ids)
    layer = lora.layers["input_1_0"]
    for row, s in enumerate(ids.tolist()):
        want = x[row] @ layer["k_A"][s].t() @ layer["k_B"][s].t() * (4 / 2)
        torch.testing.assert_close(got[row], want)
    assert got.shape == (4, 5, 8)


def test_unknown_slot_is_an_error_that_lists_the_known_slots():
    lora = GFELoRA({("input", 1, 0): 8}, ["upper", "lower"], rank=2, alpha=2)
    with pytest.raises(AnyDressingError, match=r"'hat'.*\['upper', 'lower'\]"):
        lora.slot_ids(["upper", "hat"])


def test_fresh_gfe_is_the_base_unet_and_attn2_is_removed():
    base = tiny_unet()
    lat = torch.randn(2, 4, 8, 8)
    gnet = build_garments_net(copy.deepcopy(base), slots=["upper", "lower"], rank=4, alpha=4)
    f1 = gnet.encode(lat, ["upper", "lower"])
    # zero-shot reference: the same UNet without GFE, attn2 out-projection zeroed (ComfyUI's convention)
    ref_unet = copy.deepcopy(base)
    for name, m in ref_unet.named_modules():
        if name.endswith("attn2"):
            torch.nn.init.zeros_(m.to_out[0].weight)
            torch.nn.init.zeros_(m.to_out[0].bias)
    f0 = build_garments_net(ref_unet).encode(lat, ["upper", "lower"])
    for key in f1.tokens:
        torch.testing.assert_close(f1.tokens[key], f0.tokens[key], rtol=0, atol=1e-6)
    # no text cross-attention [paper]: the context cannot change anything
    f2 = gnet.encode(lat, ["upper", "lower"], encoder_hidden_states=torch.randn(2, 3, 32) * 5)
    for key in f1.tokens:
        assert torch.equal(f1.tokens[key], f2.tokens[key])


def test_each_garment_attends_only_to_itself_and_uses_its_slots_lora():
    gnet = build_garments_net(tiny_unet(), slots=["upper", "lower"], rank=4, alpha=4)
    randomize_lora(gnet.gfe)
    a, b, c = torch.randn(3, 1, 4, 8, 8).unbind(0)
    f_ab = gnet.encode(torch.cat([a, b]), ["upper", "lower"])
    f_ac = gnet.encode(torch.cat([a, c]), ["upper", "lower"])
    f_a_lower = gnet.encode(torch.cat([a, b]), ["lower", "lower"])
    f_aa = gnet.encode(torch.cat([a, a]), ["upper", "upper"])
    for key in f_ab.tokens:
        torch.testing.assert_close(f_ab.tokens[key][0], f_ac.tokens[key][0], rtol=0, atol=1e-5)  # row 1 does not leak
        torch.testing.assert_close(f_aa.tokens[key][0], f_aa.tokens[key][1], rtol=0, atol=1e-5)  # shared slot
    deeper = [k for k in f_ab.tokens if k != next(iter(f_ab.tokens))]
    assert any((f_ab.tokens[k][0] - f_a_lower.tokens[k][0]).abs().max() > 1e-3 for k in deeper)  # slot matters


def test_piecewise_hooks_compute_what_the_processor_computes():
    """GFEHooks (ComfyUI's attn1 patch / replace / output patch) == the diffusers processor."""
    unet = tiny_unet()
    attn = attn1_modules(unet)[("input", 1, 0)]
    lora = GFELoRA({("input", 1, 0): 32}, ["upper", "lower"], rank=4, alpha=8)
    randomize_lora(lora)
    ids = lora.slot_ids(["lower", "upper"])
    n = torch.randn(2, 16, 32)
    hooks = GFEHooks(lora, ids)
    extra = {"block": ("input", 1), "block_index": 0, "n_heads": attn.heads}
    n2, _, _ = hooks.attn1_patch(n, n, n, extra)
    o = hooks.attn1_replace(attn.to_q(n2), attn.to_k(n2), attn.to_v(n2), extra)
    got = hooks.attn1_output_patch(attn.to_out[0](o), extra)
    q, k, v = lora.qkv(("input", 1, 0), n, attn.to_q(n), attn.to_k(n), attn.to_v(n), ids)
    o_ref = sdpa_attention(q, k, v, attn.heads)
    want = lora.out(("input", 1, 0), o_ref, attn.to_out[0](o_ref), ids)
    torch.testing.assert_close(got, want)
    assert "anydressing_gfe_n" not in extra and "anydressing_gfe_o" not in extra


def test_dressing_attention_neutral_settings_are_exact():
    unet = tiny_unet()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 10]), torch.randn(2, 3, 32)
    ref = unet(x, t, ctx).sample
    feats = build_garments_net(copy.deepcopy(unet)).encode(torch.randn(2, 4, 8, 8), ["upper", "lower"])
    da = install_dressing_attention(unet, projections="copy")
    assert torch.equal(unet(x, t, ctx).sample, ref)
    with da.use(feats, strength=0.0, form="separate"):
        assert torch.equal(unet(x, t, ctx).sample, ref)
    with da.use(feats, strength=0.7, garment_rows=torch.tensor([False, True]), record_maps=True):
        out = unet(x, t, ctx).sample
    assert torch.equal(out[0], ref[0])  # unconditional row: no garments [paper]
    assert (out[1] - ref[1]).abs().max() > 1e-4
    maps = da.maps
    assert set(maps) == set(feats.tokens)
    for key, m in maps.items():
        assert m.shape[0] == 1 and m.shape[2] == 2  # conditional row only, one map per garment
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))  # separate form: one softmax over garments


def test_copied_projections_equal_zero_shot_and_gradients_reach_trainables():
    unet = tiny_unet()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.randn(1, 3, 32)
    gnet = build_garments_net(copy.deepcopy(unet), slots=["upper"], rank=2, alpha=2)
    feats = gnet.encode(torch.randn(1, 4, 8, 8), ["upper"])
    da = install_dressing_attention(unet, projections="copy")
    with da.use(feats, strength=1.0, form="separate"):
        trained = unet(x, t, ctx).sample
    with da.use(da.projections.attach(feats), strength=1.0, form="separate"):
        precomputed = unet(x, t, ctx).sample
    torch.testing.assert_close(trained, precomputed)
    da.remove()
    da0 = install_dressing_attention(unet, projections=None)
    with da0.use(feats, strength=1.0, form="separate"):
        zero_shot = unet(x, t, ctx).sample
    torch.testing.assert_close(trained, zero_shot)
    trained.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in da.projections.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gnet.gfe.parameters() if p.shape[1] != 2)


def test_projection_of_features_is_f_times_w():
    w = {("input", 1, 0): (torch.randn(8, 8), torch.randn(8, 8))}
    proj = DAProjections(w)
    from anydressing_core.features import GarmentFeatures

    from anydressing_core.features import garment_kv

    feats = GarmentFeatures.of({("input", 1, 0): torch.randn(2, 3, 8)}, ["upper", "hat"])
    out = proj.attach(feats)
    gk, gv = garment_kv(out, ("input", 1, 0), None, None, torch.zeros(1, dtype=torch.float64))
    assert gk.shape == (1, 6, 8) and gk.dtype == torch.float64
    torch.testing.assert_close(gk, feats.flat(("input", 1, 0)).double() @ w[("input", 1, 0)][0].double().t())
    bad = GarmentFeatures.of({("input", 2, 0): torch.randn(1, 3, 8)}, ["upper"])
    with pytest.raises(AnyDressingError, match="input.2.0"):
        proj.attach(bad)


def test_sdxl_shaped_garmentsnet_encodes_every_layer():
    unet = tiny_unet(XL_LIKE)
    gnet = build_garments_net(unet, slots=["upper", "hat"], rank=2, alpha=2)
    randomize_lora(gnet.gfe)
    feats = gnet.encode(torch.randn(2, 4, 8, 8), ["hat", "upper"])
    assert set(feats.tokens) == set(diffusers_layer_keys(unet.config).values()) and len(feats.tokens) == 28
    assert feats.tokens[("input", 7, 2)].shape == (2, 4, 32)  # two downsamples: 8x8 -> 2x2 tokens
