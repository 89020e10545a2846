"""The garment-token budget: the per-layer pooling rule, the pooling itself, and why pooled attention is exact
where a pooled cell's tokens are equal."""

from __future__ import annotations

import pytest
import torch

from anydressing_core.attention import DAForm, dressing_attention
from anydressing_core.budget import MAX_BUDGET, apply_budget, garment_tokens, layer_grid, pool_factor, pool_tokens
from anydressing_core.errors import AnyDressingError
from anydressing_core.features import GarmentFeatures, garment_kv
from anydressing_core.gfe import DAProjections

HIGH, LOW = ("input", 1, 0), ("middle", 0, 0)


def features(n=2, latent_hw=(8, 8), c=16, seed=0, projections=False, blocky=False):
    """Two layers: ``HIGH`` at the latent's grid, ``LOW`` at half of it (as a UNet's levels)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = latent_hw
    tokens = {}
    for key, (hh, ww) in ((HIGH, (h, w)), (LOW, ((h + 1) // 2, (w + 1) // 2))):
        if blocky:  # every 2x2 cell holds one token, four times
            cells = torch.randn(n, c, hh // 2, ww // 2, generator=gen)
            grid = cells.repeat_interleave(2, 2).repeat_interleave(2, 3)
        else:
            grid = torch.randn(n, c, hh, ww, generator=gen)
        tokens[key] = grid.flatten(2).transpose(1, 2).contiguous()
    f = GarmentFeatures.of(tokens, ["upper", "lower", "hat"][:n], latent_hw=latent_hw, base="sdxl", form="joint")
    if projections:
        f.projections = DAProjections({k: (torch.randn(c, c, generator=gen), torch.randn(c, c, generator=gen))
                                       for k in tokens})
    return f


def test_the_rule_pools_2x2_until_the_layer_fits():
    assert pool_factor(64, 64, 4, 0) == 1                  # no budget
    assert pool_factor(64, 64, 1, 4096) == 1               # SDXL 1024 px, one garment: fits
    assert pool_factor(64, 64, 4, 4096) == 2               # four garments: 16384 -> 4096
    assert pool_factor(64, 64, 4, 1024) == 4               # 16384 -> 1024
    assert pool_factor(52, 76, 4, 1000) == 4               # 832x1216: 15808 -> 3952 -> 988
    assert pool_factor(26, 38, 4, 10) == 2                 # 13x19 is odd: no further pooling
    assert pool_factor(3, 3, 8, 1) == 1


def test_pool_tokens_is_the_mean_of_each_cell_in_row_major_order():
    t = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 24, 3)  # grid 4x6 per garment
    out = pool_tokens(t, (4, 6), 2)
    grid = t.reshape(2, 4, 6, 3)
    want = grid.reshape(2, 2, 2, 3, 2, 3).mean(dim=(2, 4)).reshape(2, 6, 3)
    assert out.shape == (2, 6, 3) and torch.allclose(out, want)
    half = pool_tokens(t.half(), (4, 6), 2)
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="cannot pool"):
        pool_tokens(t, (4, 6), 4)


def test_no_budget_or_a_roomy_one_returns_the_same_features():
    f = features()
    assert apply_budget(f, 0) is f
    assert apply_budget(f, 2 * 64) is f  # every layer already within it


def test_the_highest_resolution_layer_pools_first():
    f = features(n=2, latent_hw=(8, 8))  # HIGH: 2 x 64 tokens, LOW: 2 x 16 tokens
    out = apply_budget(f, 64)
    assert out.tokens[HIGH].shape == (2, 16, 16) and out.pooled[HIGH] == 2 and out.token_size(HIGH) == 4
    assert out.tokens[LOW] is f.tokens[LOW] and LOW not in out.pooled and out.token_size(LOW) == 1
    assert layer_grid(out, HIGH) == (4, 4)
    again = apply_budget(out, 16)  # pooling pooled features composes
    assert again.pooled == {HIGH: 4, LOW: 2} and again.tokens[HIGH].shape == (2, 4, 16)
    assert torch.allclose(again.tokens[HIGH], apply_budget(f, 8).tokens[HIGH], atol=1e-6)
    assert (out.slots, out.weights, out.latent_hw, out.base, out.form, f.pooled) == \
        (f.slots, f.weights, f.latent_hw, "sdxl", "joint", {})


def test_trained_projections_travel_and_pooled_k_is_pooled_f_projected():
    f = features(projections=True)
    out = apply_budget(f, 64)
    assert out.projections is f.projections
    like = torch.zeros(1, dtype=torch.float32)
    full_k, _ = garment_kv(f, HIGH, None, None, like)  # [1, 2*64, C]
    pooled_k, _ = garment_kv(out, HIGH, None, None, like)  # [1, 2*16, C]
    want = pool_tokens(full_k.reshape(2, 64, -1), (8, 8), 2).reshape(1, 32, -1)
    assert pooled_k.shape == (1, 32, 16) and torch.allclose(pooled_k, want, atol=1e-5)


@pytest.mark.parametrize("form", DAForm.ALL)
def test_pooled_attention_is_exact_when_each_cell_is_uniform(form):
    """Four equal keys with logit l weigh 4 e^l; one pooled key with logit l + log 4 weighs the same."""
    f = features(n=2, blocky=True)
    pooled = apply_budget(f, 64)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 64, 16, generator=gen) for _ in range(3))
    wk, wv = torch.randn(16, 16, generator=gen) * 0.3, torch.randn(16, 16, generator=gen) * 0.3
    kw = dict(strength=0.7, form=form, weights=[1.0, 0.5], return_maps=True)
    full, maps = dressing_attention(q, k, v, f.flat(HIGH) @ wk, f.flat(HIGH) @ wv, 4, f.lengths(HIGH), **kw)
    gk, gv = pooled.flat(HIGH) @ wk, pooled.flat(HIGH) @ wv
    out, pmaps = dressing_attention(q, k, v, gk, gv, 4, pooled.lengths(HIGH), token_size=pooled.token_size(HIGH), **kw)
    assert torch.allclose(out, full, atol=1e-5) and torch.allclose(pmaps, maps, atol=1e-5)
    uncorrected = dressing_attention(q, k, v, gk, gv, 4, pooled.lengths(HIGH), **{**kw, "return_maps": False})
    if form == DAForm.JOINT:  # without log(4) the garments would lose three quarters of their softmax mass
        assert not torch.allclose(uncorrected, full, atol=1e-3)
    else:  # separate form: a common offset on every garment logit cancels
        assert torch.allclose(uncorrected, full, atol=1e-5)


def test_token_size_one_changes_nothing():
    gen = torch.Generator().manual_seed(2)
    q, k, v, gk, gv = (torch.randn(1, 16, 8, generator=gen) for _ in range(5))
    a = dressing_attention(q, k, v, gk, gv, 2, [8, 8], strength=0.7, form=DAForm.JOINT)
    b = dressing_attention(q, k, v, gk, gv, 2, [8, 8], strength=0.7, form=DAForm.JOINT, token_size=1.0)
    assert torch.equal(a, b)


def test_the_cache_keeps_pooled_and_unpooled_layers_apart():
    """Two layers with the same token counts but different token sizes must not share bias rows."""
    gen = torch.Generator().manual_seed(3)
    q, k, v, gk, gv = (torch.randn(1, 16, 8, generator=gen) for _ in range(5))
    cache = {}
    kw = dict(strength=1.0, form=DAForm.JOINT, cache=cache)
    plain = dressing_attention(q, k, v, gk, gv, 2, [8, 8], **kw)
    sized = dressing_attention(q, k, v, gk, gv, 2, [8, 8], token_size=4.0, **kw)
    assert not torch.allclose(plain, sized) and len(cache) == 2


def test_grids_without_a_latent_size():
    f = features()
    f.latent_hw = None
    assert layer_grid(f, HIGH) == (8, 8)  # square grids are unambiguous
    odd = GarmentFeatures.of({HIGH: torch.zeros(1, 12, 4)}, ["upper"])
    with pytest.raises(AnyDressingError, match="token grid"):
        apply_budget(odd, 4)


def test_bad_budgets_are_refused():
    for bad in (-1, MAX_BUDGET + 1):
        with pytest.raises(AnyDressingError, match="budget"):
            apply_budget(features(), bad)


def test_garment_tokens_for_flop_predictions():
    grids = {HIGH: (64, 64), LOW: (32, 32)}
    assert garment_tokens(grids, 4, 0) == {HIGH: 16384, LOW: 4096}
    assert garment_tokens(grids, 4, 4096) == {HIGH: 4096, LOW: 4096}
