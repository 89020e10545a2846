"""Property-based tests (hypothesis) on garment preprocessing and on the Dressing-Attention math.

Every property runs on tiny arrays (at most 96 px, 16 channels) with a bounded number of examples, so the
file takes seconds on 2 shared cores.  Properties checked:

garments: any input either gives a valid result or an AnyDressingError (never another exception); the
result has the asked shape, is finite and in 0..1; grey = RGB with equal channels; uint8 = float/255; the
crop makes the result independent of where the garment sits on a plain background; a mask of another
size but the same aspect is rescaled, another aspect is refused; downscale keeps the aspect.

DA: shapes and finiteness for both forms; strength 0 is the plain self-attention (exact in the separate
form); permuting garments (tokens, weights and regions along) leaves the output unchanged and permutes the
maps; regions that give every row exactly one garment reproduce, row by row, that garment's
single-garment result; the separate form is affine in lambda; maps are in 0..1 and sum to 1 over
garments (separate) or at most 1 (joint).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from anydressing_core.attention import DAForm, dressing_attention, garment_maps, masks_to_tokens, sdpa_attention
from anydressing_core.errors import AnyDressingError
from anydressing_core.garments import MIN_SIDE, downscale, fit_mask, pad_to_aspect, prepare_garment, to_rgb_alpha

# Small, deterministic budgets: the suite shares 2 cores with other people's runs.
FAST = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNTED = []  # property names, for the catalogue's count


def counted(fn):
    COUNTED.append(fn.__name__)
    return fn


# ---------------------------------------------------------------- garment preprocessing

sides = st.integers(MIN_SIDE, 72)
channels = st.sampled_from([1, 3, 4])
sizes = st.tuples(st.integers(1, 8), st.integers(1, 8)).map(lambda t: (8 * t[0], 8 * t[1]))


@st.composite
def images(draw, dtype=np.float32):
    h, w, c = draw(sides), draw(sides), draw(channels)
    if dtype == np.uint8:
        return draw(hnp.arrays(np.uint8, (h, w, c)))
    seed = draw(st.integers(0, 2**16))
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


@counted
@FAST
@given(img=images(), size=sizes, with_mask=st.booleans())
def test_prepare_garment_shapes_range_finite(img, size, with_mask):
    width, height = size
    mask = None
    if with_mask:
        mask = np.zeros(img.shape[:2], np.float32)
        mask[img.shape[0] // 4: img.shape[0] // 4 + 4, img.shape[1] // 4: img.shape[1] // 4 + 4] = 1.0
    rgb, m = prepare_garment(img, mask, width, height)
    assert rgb.shape == (height, width, 3) and m.shape == (height, width)
    assert rgb.dtype == np.float32 and m.dtype == np.float32
    assert np.isfinite(rgb).all() and np.isfinite(m).all()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0 and m.min() >= 0.0 and m.max() <= 1.0
    assert m.max() > 0.5, "the garment vanished in preprocessing"


@counted
@FAST
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64, np.bool_, np.complex64]),
       fill=st.sampled_from([0.0, 0.5, 1.0, 255.0, -1.0, np.nan, np.inf]))
def test_any_array_gives_a_result_or_a_clear_error(shape, dtype, fill):
    """Fuzz: arbitrary shapes, dtypes and values never raise anything but AnyDressingError."""
    with np.errstate(invalid="ignore", over="ignore"):
        img = np.full(shape, fill).astype(dtype)
    try:
        rgb, m = prepare_garment(img, None, 16, 16)
    except AnyDressingError as e:
        assert len(str(e)) > 20  # a sentence, not a code
        return
    assert rgb.shape == (16, 16, 3) and np.isfinite(rgb).all() and 0.0 <= rgb.min() <= rgb.max() <= 1.0


@counted
@FAST
@given(img=images())
def test_grey_is_rgb_with_equal_channels(img):
    grey = img[..., :1]
    rgb, alpha = to_rgb_alpha(grey)
    assert alpha is None and rgb.shape == grey.shape[:2] + (3,)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    out_grey, _ = prepare_garment(grey, None, 16, 16)
    out_rgb, _ = prepare_garment(np.repeat(grey, 3, axis=2), None, 16, 16)
    np.testing.assert_array_equal(out_grey, out_rgb)


@counted
@FAST
@given(img=images(dtype=np.uint8))
def test_uint8_equals_float_over_255(img):
    a, alpha_a = to_rgb_alpha(img)
    b, alpha_b = to_rgb_alpha(img.astype(np.float32) / 255.0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert (alpha_a is None) == (alpha_b is None)


@counted
@FAST
@given(h=st.integers(40, 80), w=st.integers(40, 80), gh=st.integers(10, 20), gw=st.integers(10, 20),
       dy=st.integers(-8, 8), dx=st.integers(-8, 8), colour=st.tuples(*[st.floats(0, 0.6)] * 3),
       explicit_mask=st.booleans())
def test_garment_position_on_plain_background_does_not_matter(h, w, gh, gw, dy, dx, colour, explicit_mask):
    """The crop centres the garment: moving it on a white canvas gives the same prepared picture."""
    def canvas(oy, ox):
        img = np.ones((h, w, 3), np.float32)
        mask = np.zeros((h, w), np.float32)
        img[oy:oy + gh, ox:ox + gw] = colour
        img[oy + gh // 2, ox:ox + gw] = 0.9  # a stripe, so the content is not symmetric
        mask[oy:oy + gh, ox:ox + gw] = 1.0
        return img, (mask if explicit_mask else None)

    cy, cx = (h - gh) // 2, (w - gw) // 2
    oy, ox = np.clip(cy + dy, 1, h - gh - 1), np.clip(cx + dx, 1, w - gw - 1)
    a = prepare_garment(*canvas(cy, cx), 32, 32)
    b = prepare_garment(*canvas(int(oy), int(ox)), 32, 32)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


@counted
@FAST
@given(h=sides, w=sides, factor=st.sampled_from([0.37, 0.5, 2.0, 3.0, 7.3]), other=st.booleans())
def test_mask_of_another_size_rescales_other_aspect_refused(h, w, factor, other):
    """A mask made at another resolution (rounded sizes) is rescaled; one of a clearly other aspect is refused."""
    mh, mw = max(1, round(h * factor)), max(1, round(w * factor))
    if other:
        mw = mw * 2 + 3
        with pytest.raises(AnyDressingError, match="aspect"):
            fit_mask(np.ones((mh, mw), np.float32), (h, w))
        return
    out = fit_mask(np.ones((mh, mw), np.float32), (h, w))
    assert out.shape == (h, w) and out.min() >= 0 and out.max() <= 1


@counted
@FAST
@given(h=st.integers(1, 1200), w=st.integers(1, 1200), max_side=st.integers(16, 512))
def test_downscale_bounds_side_and_keeps_aspect(h, w, max_side):
    assume(min(h, w) * max_side / max(h, w) >= 4)  # rounding of tiny sides dominates the aspect otherwise
    out = downscale(np.zeros((h, w, 3), np.float32), max_side)
    oh, ow = out.shape[:2]
    assert max(oh, ow) <= max(max_side, h, w) and (max(h, w) <= max_side or max(oh, ow) <= max_side)
    assert out.shape[2] == 3
    assert abs(ow / oh - w / h) <= (w / h) * (1.0 / min(oh, ow)) + 1e-6


@counted
@FAST
@given(h=st.integers(1, 50), w=st.integers(1, 50), aspect=st.floats(0.2, 5.0), value=st.floats(0, 1))
def test_pad_to_aspect_keeps_the_picture_in_the_middle(h, w, aspect, value):
    img = np.random.default_rng(h * 100 + w).random((h, w), dtype=np.float32)
    out = pad_to_aspect(img, aspect, value)
    nh, nw = out.shape
    assert nh >= h and nw >= w and (nh == h or nw == w)
    assert abs(nw / nh - aspect) <= 1.0 / min(nh, nw) * max(aspect, 1) + 1e-6
    y, x = (nh - h) // 2, (nw - w) // 2
    np.testing.assert_array_equal(out[y:y + h, x:x + w], img)


# ---------------------------------------------------------------- Dressing-Attention


@st.composite
def da_case(draw, max_garments=4):
    heads = draw(st.sampled_from([1, 2, 4]))
    c = heads * draw(st.sampled_from([2, 4]))
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    n = draw(st.integers(1, max_garments))
    lengths = [draw(st.integers(1, 6)) for _ in range(n)]
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    q, k, v = (torch.randn(b, t, c, generator=g, dtype=torch.float64) * scale for _ in range(3))
    s = sum(lengths)
    gb = draw(st.sampled_from([1, b]))
    gk = torch.randn(gb, s, c, generator=g, dtype=torch.float64) * scale
    gv = torch.randn(gb, s, c, generator=g, dtype=torch.float64)
    weights = [draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])) for _ in range(n)]
    strength = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0, 2.0]))
    form = draw(st.sampled_from(DAForm.ALL))
    return dict(q=q, k=k, v=v, gk=gk, gv=gv, heads=heads, lengths=lengths, weights=weights, strength=strength,
                form=form)


def _run(case, **over):
    c = {**case, **over}
    return dressing_attention(c["q"], c["k"], c["v"], c["gk"], c["gv"], c["heads"], c["lengths"],
                              strength=c["strength"], form=c["form"], weights=c["weights"],
                              regions=c.get("regions"), return_maps=True)


def _permute(case, perm):
    """The same garments in another order: token blocks, weights, lengths (and regions) permuted along."""
    starts = np.cumsum([0] + case["lengths"])
    idx = torch.cat([torch.arange(starts[p], starts[p + 1]) for p in perm])
    out = dict(case, gk=case["gk"][:, idx], gv=case["gv"][:, idx], lengths=[case["lengths"][p] for p in perm],
               weights=[case["weights"][p] for p in perm])
    if case.get("regions") is not None:
        out["regions"] = case["regions"][..., list(perm)]
    return out


@counted
@FAST
@given(case=da_case())
def test_da_shapes_and_finiteness(case):
    out, maps = _run(case)
    b, t, c = case["q"].shape
    assert out.shape == (b, t, c) and maps.shape == (b, t, len(case["lengths"]))
    assert torch.isfinite(out).all() and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    total = maps.sum(-1)
    if case["form"] == DAForm.SEPARATE:
        torch.testing.assert_close(total, torch.ones_like(total))  # the paper's maps sum to 1 over garments
    else:
        assert (total <= 1 + 1e-6).all()  # joint: the image's own tokens keep the rest


@counted
@FAST
@given(case=da_case())
def test_strength_zero_is_plain_self_attention(case):
    plain = sdpa_attention(case["q"], case["k"], case["v"], case["heads"])
    out, _ = _run(case, strength=0.0)
    if case["form"] == DAForm.SEPARATE:
        assert torch.equal(out, plain)  # own + 0 * garment, bit for bit
    else:
        torch.testing.assert_close(out, plain)  # log(0) = -inf bias: the garment tokens get no mass


@counted
@FAST
@given(case=da_case(), data=st.data(), with_regions=st.booleans())
def test_garment_order_does_not_matter_and_maps_permute_along(case, data, with_regions):
    n = len(case["lengths"])
    perm = data.draw(st.permutations(range(n)))
    if with_regions:
        b, t = case["q"].shape[:2]
        seed = data.draw(st.integers(0, 2**16))
        case = dict(case, regions=(torch.rand(data.draw(st.sampled_from([1, b])), t, n,
                                              generator=torch.Generator().manual_seed(seed)) > 0.5).double())
    out, maps = _run(case)
    out_p, maps_p = _run(_permute(case, perm))
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(maps_p, maps[..., list(perm)])


@counted
@FAST
@given(case=da_case(), data=st.data())
def test_regions_selecting_one_garment_reproduce_the_single_garment_result(case, data):
    """Rows whose region holds exactly garment j equal the run with garment j alone."""
    n, (b, t) = len(case["lengths"]), case["q"].shape[:2]
    choice = data.draw(st.lists(st.integers(0, n - 1), min_size=t, max_size=t))
    regions = torch.zeros(1, t, n, dtype=torch.float64)
    regions[0, torch.arange(t), torch.tensor(choice)] = 1.0
    out, maps = _run(case, regions=regions)
    starts = np.cumsum([0] + case["lengths"])
    for j in set(choice):
        rows = [i for i, cj in enumerate(choice) if cj == j]
        sl = slice(starts[j], starts[j + 1])
        single, single_maps = _run(case, gk=case["gk"][:, sl], gv=case["gv"][:, sl], lengths=[case["lengths"][j]],
                                   weights=[case["weights"][j]], regions=None)
        torch.testing.assert_close(out[:, rows], single[:, rows])
        torch.testing.assert_close(maps[:, rows, j], single_maps[:, rows, 0])
        others = [i for i in range(n) if i != j]
        if others:
            assert float(maps[:, rows][..., others].abs().max()) == 0.0


@counted
@FAST
@given(case=da_case(), lam=st.floats(0.0, 2.0))
def test_separate_form_is_affine_in_strength(case, lam):
    case = dict(case, form=DAForm.SEPARATE)
    base, _ = _run(case, strength=0.0)
    one, _ = _run(case, strength=1.0)
    out, _ = _run(case, strength=lam)
    torch.testing.assert_close(out, base + lam * (one - base))


@counted
@FAST
@given(case=da_case(max_garments=1))
def test_joint_with_the_image_as_its_own_reference_is_self_attention(case):
    """Zero-shot sanity: K' = K, V' = V, lambda = 1 duplicates every token; softmax is unchanged."""
    q, k, v = case["q"], case["k"], case["v"]
    out = dressing_attention(q, k, v, k, v, case["heads"], [k.shape[1]], strength=1.0, form=DAForm.JOINT)
    torch.testing.assert_close(out, sdpa_attention(q, k, v, case["heads"]))


@counted
@FAST
@given(n=st.integers(1, 4), h=st.integers(1, 40), w=st.integers(1, 40), th=st.integers(1, 8), tw=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_masks_to_tokens_shape_and_range(n, h, w, th, tw, seed):
    masks = torch.rand(n, h, w, generator=torch.Generator().manual_seed(seed))
    tok = masks_to_tokens(masks, (th, tw))
    assert tok.shape == (1, th * tw, n)
    assert torch.isfinite(tok).all() and tok.min() >= 0 and tok.max() <= 1


@counted
@FAST
@given(case=da_case())
def test_maps_function_agrees_with_da(case):
    case = dict(case, form=DAForm.SEPARATE)
    _, maps = _run(case)
    direct = garment_maps(case["q"], case["gk"], case["heads"], case["lengths"])
    torch.testing.assert_close(direct, maps)


def test_property_count_is_documented():
    """docs/BAD_INPUT.md states how many properties are checked; keep it in step."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "BAD_INPUT.md").read_text()
    assert f"{len(COUNTED)} hypothesis properties" in text, (len(COUNTED), COUNTED)
