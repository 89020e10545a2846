"""Each loss term against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from anydressing_core import losses as L
from anydressing_core.errors import AnyDressingError


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ldm_loss_is_mean_squared_noise_error():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert L.ldm_loss(pred, torch.zeros(2, 2)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def _maps_and_masks():
    # one sample, N=2 garments, a 2x2 layer (T=4); masks at the same 2x2 size, so no resizing
    a = torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.0, 1.0]]])         # [B=1, T=4, N=2]
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]])      # [B=1, N=2, 2, 2]
    return a, m


def test_localization_loss_by_hand():
    a, m = _maps_and_masks()
    present = torch.tensor([[True, True]])
    # k0: A=(.9,.6,.3,0) M=(1,1,0,0): (.01+.16+.09+0)/4 = .065
    # k1: A=(.1,.4,.7,1) M=(0,0,1,1): (.01+.16+.09+0)/4 = .065
    got = L.localization_loss({"l": a}, m, present, (2, 2))
    assert got.item() == pytest.approx(0.065)
    # a second layer with perfect maps halves the layer average
    perfect = m.flatten(2).transpose(1, 2)
    assert L.localization_loss({"l": a, "p": perfect}, m, present, (2, 2)).item() == pytest.approx(0.0325)


def test_localization_loss_skips_padded_garments_and_dropped_rows():
    a, m = _maps_and_masks()
    a1 = a.clone()
    a1[0, :, 1] = torch.tensor([0.0, 0.0, 0.5, 0.5])  # k1 error: (0+0+.25+.25)/4 = .125
    both = L.localization_loss({"l": a1}, m, torch.tensor([[True, True]]), (2, 2))
    assert both.item() == pytest.approx((0.065 + 0.125) / 2)
    only_first = L.localization_loss({"l": a1}, m, torch.tensor([[True, False]]), (2, 2))
    assert only_first.item() == pytest.approx(0.065)
    # two rows, the second CFG-dropped: only the first counts
    a2, m2 = torch.cat([a1, torch.zeros_like(a1)]), torch.cat([m, m])
    rows = torch.tensor([True, False])
    got = L.localization_loss({"l": a2}, m2, torch.ones(2, 2, dtype=torch.bool), (2, 2), rows=rows)
    assert got.item() == pytest.approx((0.065 + 0.125) / 2)


def test_localization_loss_resizes_masks_by_area():
    # 4x4 image mask, layer 2x2: the top-left token holds 2 of 4 garment pixels -> M = 0.5
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, :2] = 1.0
    a = torch.zeros(1, 4, 1)
    got = L.localization_loss({"l": a}, m, torch.tensor([[True]]), (2, 2))
    assert got.item() == pytest.approx(0.25 / 4)


def test_predict_x0_inverts_the_forward_process():
    ab = torch.tensor([0.25])
    x0, eps = torch.full((1, 4, 2, 2), 2.0), torch.ones(1, 4, 2, 2)
    zt = math.sqrt(0.25) * x0 + math.sqrt(0.75) * eps
    assert torch.allclose(L.predict_x0(zt, eps, ab), x0, atol=1e-6)


def test_edge_loss_by_hand():
    pred, target = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # [1, 2, 2, 2]
    edges = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])                            # [1, 1, 2, 2]
    # M'_0 = one pixel: 3 squared errors of 1 over 12 values = .25; M'_1 = two pixels: 6/12 = .5
    got = L.edge_loss(pred, target, masks, edges, torch.tensor([[True, True]]))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(0.375)
    assert L.edge_loss(pred, target, masks, edges, torch.tensor([[True, False]])).item() == pytest.approx(0.25)


def _stage0_only():
    """DISTS whose alpha/beta weigh only the raw input channels (hand-computable)."""
    total = sum(L.DISTS.CHANNELS)
    alpha, beta = torch.zeros(total), torch.zeros(total)
    alpha[:3] = 1.0
    beta[:3] = 1.0
    torch.manual_seed(0)
    return L.DISTS(random_weights=True, alpha_beta={"alpha": alpha, "beta": beta})


def test_dists_by_hand_on_flat_images():
    d = _stage0_only()
    x, y = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.25)
    # l = (2*.5*.25)/(.25+.0625) = .8 per channel, s = c2/c2 = 1 (no variance); weights 1/6 each
    # D = 1 - (3 * .8 + 3 * 1) / 6 = 0.1
    assert d(x, y).item() == pytest.approx(0.1, abs=1e-5)


def test_dists_structure_term_by_hand():
    d = _stage0_only()
    x = torch.zeros(1, 3, 2, 2)
    x[..., 0, :] = 1.0                     # rows 1,1 / 0,0: mean .5, var .25
    y = 1.0 - x                            # mean .5, var .25, cov = mean(x*y) - .25 = -.25
    # l = 1, s = (2 * -.25)/(.5) = -1 -> D = 1 - (3*1 + 3*(-1))/6 = 1
    assert d(x, y).item() == pytest.approx(1.0, abs=1e-4)


def test_dists_is_zero_for_identical_images_and_positive_otherwise():
    torch.manual_seed(0)
    d = L.DISTS(random_weights=True)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(d(x, x), torch.zeros(2), atol=1e-5)
    assert (d(x, torch.rand(2, 3, 32, 32)) > 0).all()


def test_l2pool_keeps_a_constant_image_inside():
    pool = L.L2Pool(1)
    out = pool(torch.ones(1, 1, 8, 8))
    assert out.shape == (1, 1, 4, 4)
    assert torch.allclose(out[..., 1:, 1:], torch.ones(3, 3), atol=1e-6)  # g sums to 1


def test_dists_loss_masks_each_garment_and_skips_padding():
    d = _stage0_only()
    pred, target = torch.full((1, 3, 4, 4), 1.0), torch.full((1, 3, 4, 4), -1.0)   # [0,1]: 1 vs 0
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0] = 1.0
    # garment 0: x = 1, y = 0 everywhere: l = c/(1+c) ~ 0, s = 1 -> D = 1 - 3/6 = .5
    got = L.dists_loss(d, pred, target, masks, torch.tensor([[True, False]]))
    assert got.item() == pytest.approx(0.5, abs=1e-4)
    same = L.dists_loss(d, pred, pred, masks, torch.tensor([[True, True]]))
    assert same.item() == pytest.approx(0.0, abs=1e-5)


def test_dists_loss_has_gradient_through_the_prediction():
    torch.manual_seed(0)
    d = L.DISTS(random_weights=True)
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    L.dists_loss(d, pred * 2 - 1, torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32),
                 torch.tensor([[True]])).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in d.parameters())


def test_vgg_weights_load_from_a_local_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    ref = make_layers(cfgs["D"]).state_dict()  # the keys of torchvision's vgg16().features
    path = tmp_path / "vgg16.safetensors"
    save_file({f"features.{k}": v for k, v in ref.items()}, str(path))
    d = L.load_dists(str(path))
    assert torch.equal(d.stages[0][0].weight, ref["0.weight"])
    assert torch.equal(d.stages[4][-2].weight, ref["28.weight"])


def test_missing_vgg_weights_are_a_clear_error(tmp_path):
    with pytest.raises(AnyDressingError, match="vgg16_path"):
        L.load_dists("")
    with pytest.raises(AnyDressingError, match="does not exist"):
        L.load_dists(str(tmp_path / "nope.pth"))
    with pytest.raises(AnyDressingError, match="VGG16"):
        L.DISTS()


def test_cfg_keep_drops_at_the_requested_rate_deterministically():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    k1, k2 = L.cfg_keep(4000, 0.1, g1), L.cfg_keep(4000, 0.1, g2)
    assert torch.equal(k1, k2)
    assert 0.08 < 1 - k1.float().mean().item() < 0.12
    assert L.cfg_keep(16, 0.0, g1).all()
    with pytest.raises(ValueError):
        L.cfg_keep(4, 1.0, g1)
