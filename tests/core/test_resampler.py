"""IMAGDressing's resampler (CLIP-vision tokens -> GarmentsNet context), written from its published design."""

import math

import pytest
import torch
import torch.nn.functional as F

from anydressing_core.errors import AnyDressingError
from anydressing_core.resampler import Resampler
from resampler_weights import tiny_resampler


def test_shape_heads_and_depth_come_from_the_weights():
    r = Resampler(tiny_resampler(inner=128, depth=3), dim_head=32)
    assert (r.heads, r.depth) == (4, 3)
    out = r(torch.randn(2, 10, 48))
    assert out.shape == (2, 4, 32) and torch.isfinite(out).all()


def test_zero_blocks_leave_the_latents_through_proj_out_and_norm():
    sd = tiny_resampler(depth=1)
    for k in ("layers.0.0.to_out.weight", "layers.0.1.3.weight"):
        sd[k] = torch.zeros_like(sd[k])
    out = Resampler(sd)(torch.randn(3, 7, 48))
    lat = F.linear(sd["latents"], sd["proj_out.weight"], sd["proj_out.bias"])
    expected = F.layer_norm(lat, (32,), sd["norm_out.weight"], sd["norm_out.bias"]).expand(3, -1, -1)
    torch.testing.assert_close(out, expected)


def test_one_layer_against_a_hand_written_perceiver_step():
    sd = tiny_resampler(depth=1, inner=64)
    x_in = torch.randn(1, 5, 48)
    x = F.linear(x_in, sd["proj_in.weight"], sd["proj_in.bias"])
    lat = sd["latents"]
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[f"{n}.weight"], sd[f"{n}.bias"])  # noqa: E731
    xn, ln_lat = ln(x, "layers.0.0.norm1"), ln(lat, "layers.0.0.norm2")
    q = ln_lat @ sd["layers.0.0.to_q.weight"].T
    kv = torch.cat([xn, ln_lat], 1) @ sd["layers.0.0.to_kv.weight"].T
    k, v = kv[..., :64], kv[..., 64:]
    p = (q @ k.transpose(1, 2) / math.sqrt(64)).softmax(-1)  # one head of 64
    lat = lat + (p @ v) @ sd["layers.0.0.to_out.weight"].T
    h = F.gelu(ln(lat, "layers.0.1.0") @ sd["layers.0.1.1.weight"].T)
    lat = lat + h @ sd["layers.0.1.3.weight"].T
    expected = ln(F.linear(lat, sd["proj_out.weight"], sd["proj_out.bias"]), "norm_out")
    torch.testing.assert_close(Resampler(sd)(x_in), expected, rtol=1e-5, atol=1e-5)


def test_image_token_order_does_not_matter():
    r = Resampler(tiny_resampler())
    x = torch.randn(1, 9, 48)
    torch.testing.assert_close(r(x), r(x[:, torch.randperm(9)]), rtol=1e-5, atol=1e-5)


def test_bad_weights_and_inputs_are_named():
    sd = tiny_resampler()
    with pytest.raises(AnyDressingError, match="latents"):
        Resampler({k: v for k, v in sd.items() if k != "latents"})
    with pytest.raises(AnyDressingError, match="multiple of dim_head"):
        Resampler(tiny_resampler(inner=96))
    with pytest.raises(AnyDressingError, match="CLIP vision"):
        Resampler(sd)(torch.randn(1, 9, 40))
