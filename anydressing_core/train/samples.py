"""Periodic sample grids: garments | ground truth | generated | garment attention maps A_k.

Sampling follows the paper's inference [paper: DDIM, guidance 6.0 with text and garments dropped
together in the unconditional branch, lambda 0.7] with its own generator, so previews never touch
the training RNG (a resumed run stays exact whatever ``sample_every`` is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..attention import tokens_hw
from ..data import collate

GUIDANCE = 6.0   # [paper]
STRENGTH = 0.7   # [paper] lambda at inference


def _img(t: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [-1, 1] -> uint8 ``[H, W, 3]``."""
    return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _heat(m: torch.Tensor) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> uint8 RGB heat map."""
    g = (m.float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    return cv2.cvtColor(cv2.applyColorMap(g, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


@torch.no_grad()
def sample_grid(trainer, path: Path, count: int = 2, write: bool = True) -> Optional[Path]:
    """Run the sampler; write the grid to ``path`` when ``write`` (FSDP runs it on every process)."""
    from diffusers import DDIMScheduler

    comp, raw, cfg, dev = trainer.comp, trainer.raw, trainer.cfg, trainer.acc.device
    items = [trainer.dataset.load(i) for i in range(min(count, len(trainer.dataset)))]
    batch = collate(items)
    k, n = batch["present"].shape
    gen = torch.Generator().manual_seed(cfg.run.seed)
    sched = DDIMScheduler.from_config(comp.scheduler.config)
    sched.set_timesteps(cfg.run.sample_steps)
    text = comp.encode_text(batch["captions"] + [""] * k, dev)
    added = comp.added_cond(text, batch["person"].shape[-2:])
    gz = trainer._latents(batch["garments"].flatten(0, 1), sample=False)
    gz = torch.cat([gz, gz])
    garment_added = trainer.garment_added(gz.shape[0], batch["garments"].shape[-2:])
    slots = torch.cat([batch["slots"].flatten()] * 2).to(dev)
    present = torch.cat([batch["present"]] * 2).to(dev)
    keep = torch.tensor([True] * k + [False] * k, device=dev)
    scale = comp.codec.downscale
    h, w = batch["person"].shape[-2] // scale, batch["person"].shape[-1] // scale
    z = torch.randn(k, 4, h, w, generator=gen).to(dev, trainer.wdtype) * sched.init_noise_sigma
    old = raw.ctx.strength, raw.ctx.record_maps
    raw.ctx.strength, raw.ctx.record_maps = STRENGTH, True
    maps = None
    try:
        for i, t in enumerate(sched.timesteps):
            zz = sched.scale_model_input(torch.cat([z, z]), t)
            eps = raw(zz, t.expand(2 * k).to(dev), text.context, gz, slots, present, keep, added, garment_added)
            if i == len(sched.timesteps) // 2:
                maps = {key: m[:k].clone() for key, m in raw.ctx.maps.items()}
            cond, unc = eps.chunk(2)
            z = sched.step(unc + GUIDANCE * (cond - unc), t, z).prev_sample
        out = comp.codec.decode(z)
    finally:
        raw.ctx.strength, raw.ctx.record_maps = old
    if not write:
        return None
    H, W = batch["person"].shape[-2:]
    rows = []
    for r in range(k):
        cells = [cv2.resize(_img(batch["garments"][r, j]), (W, H)) for j in range(n)]
        cells += [_img(batch["person"][r]), _img(out[r])]
        for j in range(n):
            acc = torch.zeros(1, 1, H, W)
            for m in (maps or {}).values():
                hw = tokens_hw((h, w), m.shape[1])
                acc += F.interpolate(m[r, :, j].float().cpu().view(1, 1, *hw), size=(H, W), mode="bilinear")
            cells.append(_heat(acc[0, 0] / max(1, len(maps or {}))))
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path
