"""The ablation benchmark: scores on known inputs, the model's wiring, statistics, and a --quick run."""

import json

import cv2
import numpy as np
import pytest
import torch

from anydressing_core import attention, gfe
from benchmarks.ablation import model as bench_model
from benchmarks.ablation import scores, stats
from benchmarks.ablation.run import run_ablation
from benchmarks.ablation.settings import BY_NAME, COMPARISONS, SETTINGS, WORLDS, select
from benchmarks.ablation.train import Dresser, config, make_data, sample, take, train_base, train_setting

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg():
    return config(quick=True)


@pytest.fixture(scope="module")
def views(cfg):
    return make_data(6, cfg, ("shop", "swatch"))


@pytest.fixture(scope="module")
def data(views):
    return take(views["shop"], slice(None))


def test_localization_iou_on_known_maps(data):
    masks = data["masks"]
    assert np.nanmean(scores.localization_iou(masks.clone(), masks)) == pytest.approx(1.0)
    swapped = masks[:, [1, 0, 2]]  # upper and lower maps exchanged
    iou = scores.localization_iou(swapped, masks)
    assert np.nanmax(iou[:, :2]) == pytest.approx(0.0)


def test_region_scores_on_known_images():
    d = take(make_data(8, config(size=32, patch=2), ("shop",))["shop"], slice(None))
    textured = np.zeros(d["masks"].shape[:2], bool)
    textured[:, 0] = True
    gt = scores.region_scores(d["person"], d["person"], d["masks"], d["garments"], d["garment_masks"], textured)
    for key in ("colour_err", "edge_err", "pixel_err", "edge_err_tex"):
        assert np.nanmax(gt[key]) == pytest.approx(0.0)
    assert np.isnan(gt["edge_err_tex"][:, 1:]).all() and np.isfinite(gt["edge_err_tex"][:, 0]).all()
    assert np.nanmax(gt["confused"][:, :2]) == 0.0  # tops and bottoms of the ground truth are never confused
    # paint each upper region with the lower garment's colour: every upper region is confused
    painted = d["person"].clone()
    for i in range(painted.shape[0]):
        lower = d["garments"][i, 1][:, d["garment_masks"][i, 1] > 0.5]  # [3, P]
        values, counts = lower.t().unique(dim=0, return_counts=True)
        colour = values[counts.argmax()]  # the lower garment's most common colour
        m = d["masks"][i, 0] > 0.5
        painted[i][:, m] = colour[:, None]
    bad = scores.region_scores(painted, d["person"], d["masks"], d["garments"], d["garment_masks"], textured)
    assert np.nanmean(bad["confused"][:, 0]) == 1.0
    assert np.nanmean(bad["colour_err"][:, 0]) > 20
    summary = stats.seed_summary({0: bad}, "confused", ["upper", "lower", "hat"])
    assert summary["upper"] == 1.0 and summary["n_items"] >= 16


def test_worlds_share_the_person_and_differ_in_the_shop_pictures(views):
    shop, swatch = views["shop"], views["swatch"]
    assert shop["person"] is swatch["person"] and shop["person"].dtype == torch.uint8
    assert not torch.equal(shop["garment_masks"], swatch["garment_masks"])
    frames = swatch["garment_masks"]
    assert torch.equal(frames[:, 0], frames[:, 1]) and torch.equal(frames[:, 0], frames[:, 2])


def test_da_comes_from_the_core_and_strength_zero_is_the_base(cfg, data, monkeypatch):
    torch.manual_seed(0)
    base = bench_model.TinyUNet(8, 2, 12).eval()
    m = Dresser(base, BY_NAME["gfe"], cfg)
    assert isinstance(m.lora, gfe.GFELoRA) and isinstance(m.proj, gfe.DAProjections)
    calls = []
    real = attention.dressing_attention
    monkeypatch.setattr(bench_model, "dressing_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    z, t, pose = torch.randn(2, 12, 8, 8), torch.full((2,), 500.0), bench_model.to_latent(data["pose"][:2], 2)
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


def test_patch_four_latent_is_lossless():
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    z = bench_model.to_latent(img, 4)
    assert z.shape == (2, 48, 16, 16) and torch.equal(bench_model.to_image(z, 4), img)


def test_training_leaves_dressingnet_frozen_and_uses_the_losses(views):
    cfg = config(quick=True, steps=4, batch=4)
    base = train_base(views["shop"], cfg, seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model, curves = train_setting(base, views["shop"], BY_NAME["gfe_igl_gtl_w1"], cfg, seed=0)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert len(curves["ldm"]) == cfg.steps and len(curves["loc"]) == cfg.steps and curves["tex"]
    assert any(p.abs().sum() > 0 for n, p in model.lora.named_parameters() if n.endswith("_B"))  # LoRA B left zero
    img, maps = sample(model, take(views["shop"], slice(None)), cfg, seed=0)
    assert img.shape == (6, 3, 16, 16) and maps.shape == (6, 3, 16, 16)
    assert torch.allclose(maps.sum(1), torch.ones_like(maps[:, 0]), atol=1e-4)
    img_chunked, maps_chunked = sample(model, take(views["shop"], slice(None)), cfg, seed=0, chunk=4)
    assert torch.allclose(img, img_chunked, atol=1e-5) and torch.allclose(maps, maps_chunked, atol=1e-5)
    _, no_loc = train_setting(base, views["shop"], BY_NAME["gfe"], cfg, seed=0)
    assert not no_loc["loc"] and not no_loc["tex"]


def test_gtl_adds_dists_with_a_vgg16_file(views, tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    path = tmp_path / "vgg16.safetensors"
    save_file({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, str(path))
    cfg = config(quick=True, steps=4, batch=4, vgg16=str(path))
    base = train_base(views["shop"], cfg, seed=0)
    with_dists, curves = train_setting(base, views["shop"], BY_NAME["gfe_igl_gtl_w1"], cfg, seed=0)
    assert with_dists.dists is not None
    _, edge_only = train_setting(base, views["shop"], BY_NAME["gfe_igl_gtl_w1"], config(quick=True, steps=4, batch=4), 0)
    assert curves["tex"][0] > edge_only["tex"][0] + 1e-3  # DISTS adds to the edge term
    assert Dresser(base, BY_NAME["gfe_igl"], cfg).dists is None  # only GTL rows load VGG16


def test_settings_table_is_consistent():
    names = [s.name for s in SETTINGS]
    assert len(set(names)) == len(names) and all(s.world in WORLDS for s in SETTINGS)
    comparisons = {c.name for c in COMPARISONS}
    for c in COMPARISONS:
        assert c.after in BY_NAME and c.before in BY_NAME and c.better in (1, -1)
        assert c.delta > 0 or c.claim == "measure"  # an estimate has no smallest effect that counts
        assert c.requires is None or c.requires in comparisons
    for claim in ("GFE", "IGL", "GTL"):
        assert sum(c.primary for c in COMPARISONS if c.claim == claim) == 1
    assert [s.name for s in select(["gfe", "none"])] == ["none", "gfe"]
    with pytest.raises(ValueError, match="unknown ablation settings"):
        select(["gfe_lora"])


def test_t_quantile_matches_the_tables():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    assert stats.t_quantile(0.975, 1e5) == pytest.approx(1.960, abs=1e-3)


def test_paired_interval_counts_seed_to_seed_variation():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, (3, 40, 2))
    same = {s: {"x": np.full((40, 2), 1.0) + noise[s]} for s in range(3)}
    zero = {s: {"x": np.zeros((40, 2))} for s in range(3)}
    tight = stats.paired(same, zero, "x")
    assert tight["mean"] == pytest.approx(1.0, abs=0.01) and tight["ci"][1] - tight["ci"][0] < 0.02
    assert tight["n_items"] == 80 and set(tight["per_seed"]) == {"0", "1", "2"}
    # seeds that disagree (+1, +1, -1.9): items alone would give a tight interval; the seeds widen it
    offset = {0: 1.0, 1: 1.0, 2: -1.9}
    split = {s: {"x": np.full((40, 2), offset[s]) + noise[s]} for s in range(3)}
    wide = stats.paired(split, zero, "x")
    assert wide["ci"][0] < 0 < wide["ci"][1]
    nan = {s: {"x": np.where(np.arange(80).reshape(40, 2) < 10, np.nan, 1.0)} for s in range(3)}
    assert stats.paired(nan, zero, "x")["n_items"] == 70


def test_verdicts_follow_the_rule():
    def res(mean, lo, hi, seeds=(1, 1, 1)):
        return {"mean": mean, "ci": [lo, hi], "per_seed": {str(i): v for i, v in enumerate(seeds)}, "seeds": 3}

    assert stats.verdict(-1, 0.03, res(-0.1, -0.15, -0.05, (-0.1, -0.1, -0.1)))[0] == "confirmed"
    assert stats.verdict(-1, 0.03, res(-0.1, -0.15, -0.05, (-0.1, -0.1, 0.1)))[0] == "not measurable"
    assert stats.verdict(-1, 0.03, res(0.0, -0.01, 0.01))[0] == "refuted"
    assert stats.verdict(-1, 0.03, res(0.05, 0.01, 0.09))[0] == "refuted"  # worse
    assert stats.verdict(-1, 0.03, res(-0.02, -0.08, 0.04))[0] == "not measurable"
    assert stats.verdict(1, 0.02, res(0.1, 0.05, 0.15), condition_met=False, condition="c")[0] == "not measurable"
    assert stats.condition_verdict(-1, res(-3.0, -4.0, -2.0, (-3, -3, -3)))[0]
    assert not stats.condition_verdict(-1, res(-3.0, -4.0, 1.0, (-3, -3, -3)))[0]


def test_quick_benchmark_writes_tables_json_and_pictures(tmp_path, cfg):
    report = run_ablation(cfg, str(tmp_path), threads=1)
    res = report["results"]
    assert list(res) == [s.name for s in SETTINGS]
    assert "loc_iou" not in res["none"] and 0.0 <= res["gfe"]["loc_iou"]["mean"] <= 1.0
    assert set(res["gfe"]["confused"]["per_seed"]) == {"0", "1", "2"} and res["gfe"]["confused"]["spread"] >= 0
    assert [c["name"] for c in report["comparisons"]] == [c.name for c in COMPARISONS]
    assert all(c["verdict"] in ("confirmed", "refuted", "not measurable", "met", "not met")
               for c in report["comparisons"] if c["claim"] != "measure")
    assert {c["verdict"] for c in report["comparisons"] if c["claim"] == "measure"} == {"measured"}
    # the true masks as regions confine each garment's attention to its own part; plain zero-shot does not
    assert res["zero_shot_masks"]["loc_iou"]["mean"] > res["zero_shot"]["loc_iou"]["mean"] + 0.3
    assert report["ground_truth"]["shop"]["colour_err"]["mean"] == 0.0
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["timing_s"]["total"] > 0 and saved["timing_s"]["total_cpu"] > 0 and saved["load"]["samples"] > 2
    table = (tmp_path / "ablation.md").read_text()
    assert all(f"| {s.name} |" in table for s in SETTINGS) and "GFE: confusion (swatches)" in table
    for world in WORLDS:
        pic = cv2.imread(str(tmp_path / f"samples_{world}.png"))
        assert pic is not None and pic.shape[1] > pic.shape[0]


def test_jobs_do_not_change_the_numbers(tmp_path, cfg):
    names = ["swatch_base", "swatch_gfe"]
    one = run_ablation(cfg, str(tmp_path / "one"), names, jobs=1, threads=1)
    two = run_ablation(cfg, str(tmp_path / "two"), names, jobs=2, threads=1)
    same = lambda key: json.dumps(one[key], sort_keys=True) == json.dumps(two[key], sort_keys=True)  # noqa: E731
    assert same("results") and same("comparisons")  # (JSON: NaN per-slot entries compare equal)


def test_gtl_gate_is_the_papers_noise_level():
    from benchmarks.ablation.train import GTL_MIN_ABAR, alphas_cumprod

    sd = alphas_cumprod(1.0)
    assert int((sd >= GTL_MIN_ABAR).sum()) == 351  # t <= 350 on SD1.5's own schedule
    assert int((alphas_cumprod(16.0) >= GTL_MIN_ABAR).sum()) == 59  # the same noise level, shifted schedule


def test_pooling_row_pools_the_top_layers_only(cfg, views):
    """``zero_shot_pool2`` hands DA a quarter of the garment tokens in the top layers, all of them in the middle."""
    from benchmarks.ablation.train import Dresser, take, train_base

    base = train_base(views["shop"], cfg, 0)
    garments = take(views["shop"], slice(0, 2))["garments"]
    plain = Dresser(base, BY_NAME["zero_shot"], cfg).features(garments)
    pooled = Dresser(base, BY_NAME["zero_shot_pool2"], cfg).features(garments)
    for key, f in plain.items():
        ratio = 4 if key[0] != "middle" else 1
        assert pooled[key].shape[1] * ratio == f.shape[1], key


def test_gradient_probe_reports_each_terms_pull(cfg):
    """benchmarks.ablation.gradients: every loss term reaches the trainable weights (a term cut off from them,
    e.g. maps detached from the graph or GTL on no rows, reads as a zero pull)."""
    from benchmarks.ablation.gradients import measure

    out = measure(cfg, batches=1, seed=0)
    mean = out["mean"]
    assert all(np.isfinite(mean[k]) and mean[k] > 0 for k in ("g_ldm", "g_loc", "g_tex"))
    assert -1.0 <= mean["cos_loc"] <= 1.0 and -1.0 <= mean["cos_tex"] <= 1.0
    assert 0.0 < out["gated_share_of_rows"] < 1.0
