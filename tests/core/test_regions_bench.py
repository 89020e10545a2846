"""The regions rows of the synthetic benchmark (benchmarks/ablation/regions.py) in --quick mode."""

import json

import torch

from benchmarks.ablation.regions import SOURCES, run_regions
from benchmarks.ablation.train import config


def test_quick_regions_run_writes_its_table_and_regions_restrict_the_maps(tmp_path, one_thread):
    report = run_regions(config(quick=True), str(tmp_path))
    for name in ("regions.json", "regions.md", "regions.png"):
        assert (tmp_path / name).is_file()
    assert set(report["results"]) == set(SOURCES)
    iou = {s: r["loc_iou"]["mean"] for s, r in report["results"].items()}
    # the true masks and the pose regions confine each garment's attention to its part; zero-shot does not
    assert iou["masks"] > iou["zero_shot"] + 0.3 and iou["pose"] > iou["zero_shot"] + 0.3
    assert "pose - zero_shot" in report["paired"] and "pose - masks" in report["paired"]
    assert report["paired"]["pose - zero_shot"]["loc_iou"]["seeds"] == len(config(quick=True).seeds)
    assert report["gap_closed"]["masks"] == 1.0
    assert json.loads((tmp_path / "regions.json").read_text())["gap_closed"]["zero_shot"] == 0.0


def test_a_hook_that_gives_no_regions_leaves_the_zero_shot_row_unchanged(one_thread):
    """The hook's plumbing (told of every step, asked at every layer) changes nothing by itself."""
    from benchmarks.ablation.settings import BY_NAME
    from benchmarks.ablation.train import VAL_OFFSET, Dresser, make_data, sample, take, train_base

    class Silent:
        def __init__(self):
            self.steps, self.layers = 0, 0

        def begin_step(self, step):
            self.steps += 1

        def layer(self, key, q, gk, heads, lengths):
            self.layers += 1
            return None

    cfg = config(quick=True)
    base = train_base(make_data(cfg.n_train, cfg, ["shop"])["shop"], cfg, 0)
    val = take(make_data(cfg.n_val, cfg, ["shop"], offset=VAL_OFFSET)["shop"], slice(None))
    model = Dresser(base, BY_NAME["zero_shot"], cfg)
    hook = Silent()
    plain, _ = sample(model, val, cfg, 0, chunk=cfg.n_val)
    hooked, _ = sample(model, val, cfg, 0, regions=hook)
    assert torch.equal(plain, hooked)
    chunked, _ = sample(model, val, cfg, 0, chunk=1)  # the noise is drawn for all samples first
    assert torch.allclose(chunked, plain, atol=1e-5)
    assert hook.steps == cfg.sample_steps and hook.layers == 3 * cfg.sample_steps
