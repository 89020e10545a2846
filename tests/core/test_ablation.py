"""The ablation benchmark: scores on known inputs, the model's wiring, and a --quick run."""

import json

import cv2
import numpy as np
import pytest
import torch

from anydressing_core import attention, gfe
from benchmarks.ablation import model as bench_model
from benchmarks.ablation import scores
from benchmarks.ablation.run import config, run_ablation
from benchmarks.ablation.train import SETTINGS, Dresser, make_data, sample, train_base, train_setting


@pytest.fixture(scope="module")
def data():
    return make_data(6, 16, seed=0)


def test_localization_iou_on_known_maps(data):
    masks = data["masks"]
    assert np.nanmean(scores.localization_iou(masks.clone(), masks)) == pytest.approx(1.0)
    swapped = masks[:, [1, 0, 2]]  # upper and lower maps exchanged
    iou = scores.localization_iou(swapped, masks)
    assert np.nanmax(iou[:, :2]) == pytest.approx(0.0)


def test_region_scores_on_known_images():
    data = make_data(8, 32, seed=0)
    gt = scores.region_scores(data["person"], data["person"], data["masks"], data["garments"], data["garment_masks"])
    for key in ("colour_err", "edge_err", "pixel_err"):
        assert np.nanmax(gt[key]) == pytest.approx(0.0)
    assert np.nanmax(gt["confused"][:, :2]) == 0.0  # tops and bottoms of the ground truth are never confused
    # paint each upper region with the lower garment's colour: every upper region is confused
    painted = data["person"].clone()
    for i in range(painted.shape[0]):
        lower = data["garments"][i, 1][:, data["garment_masks"][i, 1] > 0.5]  # [3, P]
        values, counts = lower.t().unique(dim=0, return_counts=True)
        colour = values[counts.argmax()]  # the lower garment's most common colour
        m = data["masks"][i, 0] > 0.5
        painted[i][:, m] = colour[:, None]
    bad = scores.region_scores(painted, data["person"], data["masks"], data["garments"], data["garment_masks"])
    assert np.nanmean(bad["confused"][:, 0]) == 1.0
    assert np.nanmean(bad["colour_err"][:, 0]) > 20
    summary = scores.summarize(bad, ["upper", "lower", "hat"])
    assert summary["confused"]["upper"] == 1.0 and summary["confused"]["n"] >= 16


def test_da_comes_from_the_core_and_strength_zero_is_the_base(data, monkeypatch):
    torch.manual_seed(0)
    base = bench_model.TinyUNet(8).eval()
    cfg = config(quick=True)
    m = Dresser(base, "gfe", cfg)
    assert isinstance(m.lora, gfe.GFELoRA) and isinstance(m.proj, gfe.DAProjections)
    calls = []
    real = attention.dressing_attention
    monkeypatch.setattr(bench_model, "dressing_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    z, t, pose = torch.randn(2, 12, 8, 8), torch.full((2,), 500.0), bench_model.to_latent(data["pose"][:2])
    feats = m.features(data["garments"][:2])
    assert feats[("input", 1, 0)].shape == (2, 3 * 64, 8)
    with torch.no_grad():
        plain = base(z, t, pose)
        ctx = m.ctx(feats, 3, want_maps=True)
        dressed = base(z, t, pose, ctx)
        ctx0 = m.ctx(feats, 3, want_maps=False)
        ctx0.strength = 0.0
        neutral = base(z, t, pose, ctx0)
    assert len(calls) == 6  # three DA layers, two passes
    assert not torch.allclose(plain, dressed)
    assert torch.equal(plain, neutral)
    assert set(ctx.maps) == set(bench_model.DA_KEYS)
    assert torch.allclose(ctx.maps[("middle", 0, 0)].sum(-1), torch.ones(2, 16), atol=1e-5)  # maps sum to 1


def test_training_leaves_dressingnet_frozen_and_uses_the_losses(data):
    cfg = config(quick=True)
    base = train_base(data, cfg)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model, curves = train_setting(base, data, "gfe_igl_gtl", cfg)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert len(curves["ldm"]) == cfg.steps and len(curves["loc"]) == cfg.steps
    assert any(p.abs().sum() > 0 for n, p in model.lora.named_parameters() if n.endswith("_B"))  # LoRA B left zero
    img, maps = sample(model, data, cfg, "gfe_igl_gtl")
    assert img.shape == data["person"].shape and maps.shape == data["masks"].shape
    assert torch.allclose(maps.sum(1), torch.ones_like(maps[:, 0]), atol=1e-4)


def test_quick_benchmark_writes_table_json_and_picture(tmp_path):
    report = run_ablation(config(quick=True), str(tmp_path))
    res = report["results"]
    assert list(res) == list(SETTINGS) + ["ground_truth"]
    assert "loc_iou" not in res["none"] and 0.0 <= res["gfe"]["loc_iou"]["mean"] <= 1.0
    assert set(report["paired"]) == {"gfe - base", "gfe_igl - gfe", "gfe_igl_gtl - gfe_igl", "base - zero_shot"}
    assert res["ground_truth"]["colour_err"]["mean"] == 0.0
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["results"]["base"]["confused"]["n"] > 0 and saved["timing_s"]["total"] > 0
    table = (tmp_path / "ablation.md").read_text()
    assert all(f"| {s} |" in table for s in SETTINGS) and "| gfe - base |" in table
    pic = cv2.imread(str(tmp_path / "samples.png"))
    assert pic is not None and pic.shape[1] > pic.shape[0]


def test_paired_differences_on_known_values():
    after = {"x": np.array([[1.0, 2.0], [3.0, np.nan]])}
    before = {"x": np.array([[0.0, 1.0], [1.0, 5.0]]), "y": np.zeros((2, 2))}
    d = scores.paired(after, before)
    assert set(d) == {"x"} and d["x"]["n"] == 3
    assert d["x"]["mean"] == pytest.approx(4 / 3)
    assert d["x"]["sem"] == pytest.approx(np.std([1.0, 1.0, 2.0], ddof=1) / np.sqrt(3))
