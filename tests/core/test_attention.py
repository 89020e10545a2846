"""Dressing-Attention math on tiny tensors, against explicit reference formulas."""

import math

import pytest
import torch

from anydressing_core.attention import (
    DAForm,
    dressing_attention,
    garment_maps,
    masks_to_tokens,
    sdpa_attention,
    tokens_hw,
)

HEADS = 2


def ref_attention(q, k, v, heads, bias=None):
    """Textbook multi-head attention, float64."""
    b, t, c = q.shape
    d = c // heads
    qh = q.double().view(b, t, heads, d).transpose(1, 2)
    kh = k.double().expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.double().expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        logits = logits + bias.double()
    p = logits.softmax(-1)
    return (p @ vh).transpose(1, 2).reshape(b, t, c), p


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    b, t, c = 2, 6, 8
    q, k, v = (torch.randn(b, t, c, generator=g) for _ in range(3))
    gk, gv = torch.randn(1, 10, c, generator=g), torch.randn(1, 10, c, generator=g)
    return q, k, v, gk, gv


def test_separate_form_is_eq6(qkv):
    q, k, v, gk, gv = qkv
    out = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], strength=0.7, form=DAForm.SEPARATE)
    own, _ = ref_attention(q, k, v, HEADS)
    garm, _ = ref_attention(q, gk, gv, HEADS)
    torch.testing.assert_close(out.double(), own + 0.7 * garm, atol=1e-5, rtol=1e-5)


def test_separate_form_single_softmax_over_all_garments(qkv):
    """One softmax over the concatenated garments, not one per garment [paper]."""
    q, k, v, gk, gv = qkv
    out = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], strength=1.0)
    own, _ = ref_attention(q, k, v, HEADS)
    per_garment = ref_attention(q, gk[:, :4], gv[:, :4], HEADS)[0] + ref_attention(q, gk[:, 4:], gv[:, 4:], HEADS)[0]
    assert not torch.allclose(out.double(), own + per_garment, atol=1e-3)


def test_joint_form_is_one_softmax(qkv):
    q, k, v, gk, gv = qkv
    out = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], strength=1.0, form=DAForm.JOINT)
    ref, _ = ref_attention(q, torch.cat([k, gk.expand(2, -1, -1)], 1), torch.cat([v, gv.expand(2, -1, -1)], 1), HEADS)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_joint_strength_is_log_bias(qkv):
    q, k, v, gk, gv = qkv
    out = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], strength=0.5, weights=[1.0, 2.0], form=DAForm.JOINT)
    bias = torch.cat([torch.zeros(6), torch.full((4,), math.log(0.5)), torch.full((6,), math.log(1.0))])
    ref, _ = ref_attention(q, torch.cat([k, gk.expand(2, -1, -1)], 1), torch.cat([v, gv.expand(2, -1, -1)], 1),
                           HEADS, bias=bias)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_strength_zero_is_plain_self_attention(qkv):
    q, k, v, gk, gv = qkv
    for form in DAForm.ALL:
        out = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], strength=0.0, form=form)
        torch.testing.assert_close(out, sdpa_attention(q, k, v, HEADS), atol=1e-6, rtol=1e-6)


def test_weights_scale_each_garment_separately(qkv):
    q, k, v, gk, gv = qkv
    w = torch.tensor([0.0, 1.0])
    out = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], strength=1.0, weights=w)
    own, _ = ref_attention(q, k, v, HEADS)
    _, p = ref_attention(q, gk, gv, HEADS)
    b, t, c = q.shape
    vh = gv.double().expand(b, -1, -1).reshape(b, -1, HEADS, c // HEADS).transpose(1, 2).clone()
    vh[:, :, :4] = 0.0  # garment 0 weighted out: its probability mass stays, its values do not count
    garm = (p @ vh).transpose(1, 2).reshape(b, t, c)
    torch.testing.assert_close(out.double(), own + garm, atol=1e-5, rtol=1e-5)


def test_maps_sum_to_one_and_match_probabilities(qkv):
    q, k, v, gk, gv = qkv
    _, maps = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], return_maps=True)
    _, p = ref_attention(q, gk, gv, HEADS)
    expected = torch.stack([p[..., :4].sum(-1), p[..., 4:].sum(-1)], -1).mean(1)
    torch.testing.assert_close(maps.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 6), atol=1e-5, rtol=1e-5)


def test_joint_maps_leave_mass_to_the_image(qkv):
    q, k, v, gk, gv = qkv
    _, maps = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], form=DAForm.JOINT, return_maps=True)
    assert (maps.sum(-1) < 1).all() and (maps > 0).all()


def test_regions_restrict_rows_to_their_garment(qkv):
    q, k, v, gk, gv = qkv
    regions = torch.zeros(1, 6, 2)
    regions[0, :3, 0] = 1  # rows 0-2 see garment 0 only; rows 3-5 are in no region: they see both
    out, maps = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], regions=regions, return_maps=True)
    torch.testing.assert_close(maps[:, :3, 0], torch.ones(2, 3))
    single = dressing_attention(q, k, v, gk[:, :4], gv[:, :4], HEADS, [4])
    torch.testing.assert_close(out[:, :3], single[:, :3], atol=1e-5, rtol=1e-5)
    free = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6])
    torch.testing.assert_close(out[:, 3:], free[:, 3:], atol=1e-5, rtol=1e-5)


def test_injected_attention_function_is_used(qkv):
    q, k, v, gk, gv = qkv
    calls = []

    def attn(q_, k_, v_, heads, mask=None):
        calls.append(k_.shape[1])
        return sdpa_attention(q_, k_, v_, heads, mask=mask)

    dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], attention=attn)
    assert calls == [6, 10]  # own tokens, then all garment tokens in one call


def test_garment_batch_is_shared_without_copies(qkv):
    q, k, v, gk, gv = qkv
    shared = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6])
    per_row = dressing_attention(q, k, v, gk.expand(2, -1, -1).contiguous(), gv.expand(2, -1, -1).contiguous(), HEADS, [4, 6])
    torch.testing.assert_close(shared, per_row)


@pytest.mark.parametrize("form", [DAForm.SEPARATE, DAForm.JOINT])
def test_cache_builds_the_settings_tensors_once_and_changes_nothing(qkv, form):
    """With a caller-owned cache (one sampling run) the bias rows and weight scales are built once per token
    count and reused; outputs and maps are identical to the uncached call at every call."""
    q, k, v, gk, gv = qkv
    regions = torch.zeros(1, 6, 2)
    regions[:, :3, 0] = 1
    kw = dict(strength=0.7, weights=[1.0, 2.0], form=form, regions=regions, return_maps=True)
    cache = {}
    for step in range(3):
        kk = k + step
        cached = dressing_attention(q, kk, v, gk, gv, HEADS, [4, 6], cache=cache, **kw)
        plain = dressing_attention(q, kk, v, gk, gv, HEADS, [4, 6], **kw)
        for a, b in zip(cached, plain):
            assert torch.equal(a, b)
        if step == 0:
            first = next(iter(cache.values()))
        assert len(cache) == 1 and next(iter(cache.values())) is first, "rebuilt on a later call"
    # another token count (another layer or resolution) gets its own entry
    dressing_attention(q[:, :4], k[:, :4], v[:, :4], gk, gv, HEADS, [4, 6], cache=cache, form=form, strength=0.7)
    assert len(cache) == 2


@pytest.mark.parametrize("bad", ["lengths", "heads", "form", "weights"])
def test_bad_arguments_say_what_is_wrong(qkv, bad):
    q, k, v, gk, gv = qkv
    kwargs = dict(lengths=[4, 6], heads=HEADS)
    if bad == "lengths":
        kwargs["lengths"] = [4, 4]
    elif bad == "heads":
        kwargs["heads"] = 3
    elif bad == "form":
        kwargs["form"] = "sideways"
    else:
        kwargs["weights"] = [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        dressing_attention(q, k, v, gk, gv, **kwargs)


def test_garment_maps_function_matches_dressing_attention(qkv):
    q, k, v, gk, gv = qkv
    _, maps = dressing_attention(q, k, v, gk, gv, HEADS, [4, 6], return_maps=True)
    torch.testing.assert_close(maps, garment_maps(q, gk, HEADS, [4, 6]))


def test_tokens_hw_follows_ceil_downsampling():
    assert tokens_hw((9, 7), 63) == (9, 7)
    assert tokens_hw((9, 7), 20) == (5, 4)
    assert tokens_hw((9, 7), 6) == (3, 2)
    with pytest.raises(ValueError):
        tokens_hw((8, 8), 7)


def test_masks_to_tokens_area_average():
    m = torch.zeros(2, 4, 4)
    m[0, :2] = 1
    m[1, :, :2] = 1
    tok = masks_to_tokens(m, (2, 2))
    assert tok.shape == (1, 4, 2)
    torch.testing.assert_close(tok[0, :, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(tok[0, :, 1], torch.tensor([1.0, 0.0, 1.0, 0.0]))
