"""Data, noise schedule, training and DDIM sampling for the ablation benchmark.

The rows are listed in ``settings.SETTINGS``.  DressingNet (the base) is frozen in every setting
[paper].  Within one seed every trained setting starts from the same base weights, sees the same
batches and noise for the same number of steps (the fixed budget) and samples from the same noise,
so two settings differ only by what they switch on.  Across seeds all of that changes (base
weights, LoRA initialisation, batches, noise); the data stay the same.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from anydressing_core import losses
from anydressing_core.gfe import DAProjections, GFELoRA
from anydressing_core.synthetic import PATTERNS, in_shop_picture, pose_image, render_sample
from .model import DA_KEYS, Ctx, TinyUNet, encode_garments, pool_features, to_image, to_latent
from .settings import WORLDS, Setting

log = logging.getLogger(__name__)

SLOTS = ("upper", "lower", "hat")
VAL_OFFSET = 1_000_000  # validation samples are indices the training split never draws
TEXTURED = (PATTERNS.index("stripes"), PATTERNS.index("checks"))


def alphas_cumprod(shift: float = 1.0, steps: int = 1000) -> torch.Tensor:
    """SD1.5's scaled-linear schedule (beta 0.00085..0.012) [paper's base], ``[1000]``, with its
    signal-to-noise ratio divided by ``shift``: ``abar / (abar + shift * (1 - abar))``."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    return (abar / (abar + shift * (1 - abar))).float()


#: GTL only where the one-step estimate is good enough [paper: t <= 350 on SD1.5's schedule]: the same
#: noise level (abar >= 0.506, SNR >= 1.03) on the benchmark's shifted schedule (t <= 58 for patch 4)
GTL_MIN_ABAR = float(alphas_cumprod()[losses.GTL_MAX_T])


@dataclass
class Config:
    size: int = 64
    patch: int = 4            # [choice] 64x64 images as 48 x 16 x 16 latents (SD1.5's latent is /8)
    channels: int = 32
    heads: int = 2
    pattern_scale: float = 2.0  # [choice] stripe bands of 4-5 px at 64 px (1.0 gives 2-px bands)
    n_train: int = 2000
    n_val: int = 96
    base_steps: int = 1000
    steps: int = 600
    batch: int = 8
    lr_base: float = 1e-3     # [choice] tiny nets from scratch
    lr: float = 1e-3          # [choice] GarmentsNet + Wk', Wv' (paper: 5e-5 on SD1.5)
    rank: int = 8             # [choice] GFE LoRA rank C/4 (paper's sibling: 64 of 320 on SD1.5)
    alpha: float = 8.0
    lambda_loc: float = losses.LAMBDA_LOC
    sample_steps: int = 20
    strength: float = 1.0     # [choice] lambda as in training; the paper uses 0.7 at inference on SD
    prediction: str = "x0"    # [choice] "x0" or "eps" (the paper's); see docs/BENCHMARK.md
    base_reference: float = 0.5  # [choice] share of base steps that attend to a mirrored copy (see train_base)
    noise_shift: Optional[float] = None  # [choice] SNR divisor of the schedule; None: patch**2 (see schedule)
    seeds: Tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    vgg16: Optional[str] = None
    device: str = "cpu"       # noise and batches are drawn on the CPU, so a GPU run sees the same ones


QUICK = dict(size=16, patch=2, channels=8, n_train=16, n_val=4, base_steps=2, steps=2, batch=2, sample_steps=2,
             seeds=(0, 1, 2))


def config(quick: bool = False, **overrides) -> Config:
    """The full benchmark's config, or the seconds-long ``quick`` one, with ``overrides`` (None = keep)."""
    base = dataclasses.asdict(Config())
    if quick:
        base.update(QUICK)
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["seeds"] = tuple(base["seeds"])
    return Config(**base)


def _render(job) -> Dict[str, np.ndarray]:
    """Samples ``range(first, first + count)`` as numpy arrays (``make_data``'s layout, worlds prefixed)."""
    first, count, cfg, worlds = job
    size = cfg.size
    rows: Dict[str, list] = {}
    for i in range(first, first + count):
        s = render_sample(i, size, cfg.data_seed, slots=SLOTS, pattern_scale=cfg.pattern_scale)
        row = {"person": s.person.transpose(2, 0, 1), "pose": pose_image(s.keypoints, size).transpose(2, 0, 1),
               "masks": np.stack([g.mask for g in s.garments]),
               "edges": cv2.Canny(cv2.cvtColor(s.person, cv2.COLOR_RGB2GRAY), 50, 150)[None] > 0,
               "pattern": np.array([PATTERNS.index(g.spec.pattern) for g in s.garments]),
               "keypoints": s.keypoints}
        for w in worlds:  # the person does not depend on the world: only the in-shop pictures are drawn again
            pictures = [(g.image, g.garment_mask) if not WORLDS[w].swatch else in_shop_picture(g.spec, size, True)
                        for g in s.garments]
            row[f"{w}/garments"] = np.stack([p[0].transpose(2, 0, 1) for p in pictures])
            row[f"{w}/garment_masks"] = np.stack([p[1] for p in pictures])
        for key, value in row.items():
            rows.setdefault(key, []).append(value)
    return {key: np.stack(v) for key, v in rows.items()}


def make_data(count: int, cfg: Config, worlds: Sequence[str], offset: int = 0,
              jobs: int = 1) -> Dict[str, Dict[str, torch.Tensor]]:
    """Render ``count`` three-garment samples, compactly: ``{world: view}``.

    A view holds person and pose ``[n, 3, S, S]`` uint8, garments ``[n, 3, 3, S, S]`` uint8 (the
    world's in-shop pictures), masks (person-image M_k) and garment_masks ``[n, 3, S, S]`` bool,
    edges ``[n, 1, S, S]`` bool (Canny of the person image, thresholds 50/150 [choice]) and
    pattern ``[n, 3]`` (index in ``synthetic.PATTERNS``) and keypoints ``[n, 17, 2]`` (COCO-17 pixels, float64,
    for the regions rows).  Worlds share the person tensors.
    ``jobs > 1`` renders in that many processes (the samples do not depend on it).
    """
    jobs = max(1, min(jobs, count // 50))
    bounds = np.linspace(0, count, jobs + 1).round().astype(int)
    work = [(offset + int(a), int(b - a), cfg, tuple(worlds)) for a, b in zip(bounds[:-1], bounds[1:])]
    if jobs == 1:
        parts = [_render(w) for w in work]
    else:
        with mp.get_context("spawn").Pool(jobs) as pool:
            parts = pool.map(_render, work)
    arrays = {key: torch.from_numpy(np.concatenate([p[key] for p in parts])) for key in parts[0]}
    common = {k: v for k, v in arrays.items() if "/" not in k}
    return {w: dict(common, garments=arrays[f"{w}/garments"], garment_masks=arrays[f"{w}/garment_masks"])
            for w in worlds}


def take(view: Dict[str, torch.Tensor], idx, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """Rows ``idx`` of a view as floats: images in [-1, 1], masks and edges in {0, 1}."""
    out = {}
    for key, v in view.items():
        v = v[idx].to(device)
        if key in ("pattern", "keypoints"):
            out[key] = v
        elif v.dtype == torch.uint8:
            out[key] = v.float().div(127.5).sub(1.0)
        else:
            out[key] = v.float()
    return out


def schedule(cfg: Config) -> torch.Tensor:
    """The benchmark's ``abar [1000]`` on ``cfg.device``.

    [choice] SD1.5's schedule was made for latents of 4 channels per token; a patch-p token here
    holds p*p pixels of one colour region, so at the same t its colour is p*p times easier to read
    through the noise and the denoiser learns to ignore the garments (pilot at 64 px, patch 4,
    600 steps: L_ldm fell only from 0.047 to 0.044 and colour error moved 114 -> 106).  Dividing the
    SNR by p*p (the resolution shift of Hoogeboom et al., "simple diffusion", 2023) gives each
    token the noise a single pixel would have (pilot, 400 steps: colour error of the trained
    reference net 111 -> 90).
    """
    shift = cfg.noise_shift if cfg.noise_shift is not None else float(cfg.patch ** 2)
    return alphas_cumprod(shift).to(cfg.device)


def _noised(z0, gen, abar):
    t = torch.randint(0, abar.numel(), (z0.shape[0],), generator=gen)
    eps = torch.randn(z0.shape, generator=gen).to(z0.device)
    ab = abar.cpu()[t].view(-1, 1, 1, 1).to(z0.device)
    return ab.sqrt() * z0 + (1 - ab).sqrt() * eps, t.to(z0.device), eps


def check_config(cfg: Config) -> None:
    """Refuse settings that cannot run, before any data is drawn."""
    if cfg.prediction not in ("x0", "eps"):
        raise ValueError(f"prediction {cfg.prediction!r} is not one of 'x0', 'eps'")
    if cfg.patch not in (1, 2, 4, 8) or cfg.size % (2 * cfg.patch):
        raise ValueError(f"size {cfg.size} must be a multiple of 2 * patch ({cfg.patch}); patch is 1, 2, 4 or 8")
    if cfg.channels % 8 or cfg.channels % cfg.heads:
        raise ValueError(f"channels {cfg.channels} must be a multiple of 8 (group norm) and of heads {cfg.heads}")
    if not cfg.seeds:
        raise ValueError("give at least one seed")


def _x0(pred, zt, t, abar, cfg: Config):
    """The one-step clean estimate [paper, Eq. 10 for eps; the prediction itself for x0]."""
    return pred if cfg.prediction == "x0" else losses.predict_x0(zt, pred, abar[t])


class _OwnKV:
    """K', V' from a net's own attn1 projections, shared (not copied): reference attention."""

    def __init__(self, net: TinyUNet):
        self.blocks = net.blocks()

    def kv(self, key, f):
        a = self.blocks[key].attn1
        return a.to_k(f), a.to_v(f)


def train_base(view, cfg: Config, seed: int) -> TinyUNet:
    """Pose-conditioned person denoiser: the frozen DressingNet (stands in for SD1.5).

    [choice] On a ``cfg.base_reference`` share of steps its self-attention also sees the tokens of a
    mirrored copy of the target (the net itself encodes it at t=0, its own Wk/Wv project it: the
    zero-shot DA with one garment).  SD1.5 learned to copy appearance through
    self-attention from web-scale data; a tiny net trained for minutes has not, and without it
    its frozen layers could not use garment tokens at this budget (measured: confusion stayed at
    chance after 450 DA steps).  Every setting of a seed shares this base, so the ablation stays fair.
    """
    torch.manual_seed(seed)
    net = TinyUNet(cfg.channels, cfg.heads, 3 * cfg.patch ** 2).to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr_base)
    gen = torch.Generator().manual_seed(seed * 1000 + 1)
    abar = schedule(cfg).cpu()
    n = view["person"].shape[0]
    t0 = time.time()
    for step in range(cfg.base_steps):
        idx = torch.randint(0, n, (cfg.batch,), generator=gen)
        b = take({"person": view["person"], "pose": view["pose"]}, idx, cfg.device)
        z0 = to_latent(b["person"], cfg.patch)
        zt, t, eps = _noised(z0, gen, abar)
        ctx = None
        if torch.rand((), generator=gen).item() < cfg.base_reference:
            feats = encode_garments(net, b["person"].flip(-1).unsqueeze(1), patch=cfg.patch)
            ctx = Ctx(mode="dress", garments=feats, count=1, proj=_OwnKV(net), strength=1.0)
        pred = net(zt, t.float(), to_latent(b["pose"], cfg.patch), ctx)
        loss = F.mse_loss(pred, z0 if cfg.prediction == "x0" else eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.base_steps - 1:
            log.info("seed %d base step %d/%d loss %.4f (%.0fs)", seed, step, cfg.base_steps, loss.item(),
                     time.time() - t0)
    net.requires_grad_(False)
    return net.eval()


class Dresser:
    """GarmentsNet + Wk'/Wv' (+ GFE LoRA) around a frozen DressingNet, as ``setting`` says."""

    def __init__(self, base: TinyUNet, setting: Setting, cfg: Config):
        self.setting, self.cfg, self.dress = setting, cfg, base
        blocks = base.blocks()
        self.gnet = copy.deepcopy(base).requires_grad_(True).train() if setting.trained else base
        self.proj = DAProjections.from_modules({k: b.attn1.to_k for k, b in blocks.items()},
                                               {k: b.attn1.to_v for k, b in blocks.items()}, trainable=setting.trained)
        self.lora = GFELoRA({k: cfg.channels for k in DA_KEYS}, SLOTS, rank=cfg.rank, alpha=cfg.alpha,
                            device=cfg.device) if setting.gfe else None
        self.dists = losses.load_dists(cfg.vgg16).to(cfg.device) if setting.gtl and cfg.vgg16 else None

    def parameters(self):
        params = list(self.gnet.parameters()) + list(self.proj.parameters())
        return params + (list(self.lora.parameters()) if self.lora is not None else [])

    def features(self, garments: torch.Tensor):
        """``garments [B, N, 3, S, S]`` -> ``{key: F_all [B, N*L, C]}`` (the slots are SLOTS in order)."""
        ids = self.lora.slot_ids(list(SLOTS) * garments.shape[0], garments.device) if self.lora is not None else None
        feats = encode_garments(self.gnet, garments, ids, self.lora, self.cfg.patch)
        if self.setting.pooling > 1:  # a budget that pools the top (16x16 at 64 px) layers exactly this much
            top = (self.cfg.size // self.cfg.patch) ** 2
            feats = pool_features(feats, garments.shape[1], garments.shape[1] * top // self.setting.pooling ** 2)
        return feats

    def ctx(self, feats, count: int, want_maps: bool) -> Ctx:
        return Ctx(mode="dress", garments=feats, count=count, proj=self.proj, strength=self.cfg.strength,
                   want_maps=want_maps)


def _texture_loss(model: Dresser, img, b, sel, present) -> torch.Tensor:
    """GTL [paper, Eqs. 11-13] on the rows ``sel`` (t <= 350): edge term, plus DISTS with VGG16 weights."""
    tex = losses.edge_loss(img, b["person"][sel], b["masks"][sel], b["edges"][sel], present[sel])
    if model.dists is not None:
        tex = tex + losses.dists_loss(model.dists, img, b["person"][sel], b["masks"][sel], present[sel])
    return tex.mean()


def train_setting(base: TinyUNet, view, setting: Setting, cfg: Config, seed: int) -> Tuple[Dresser, Dict[str, list]]:
    """Train one setting for ``cfg.steps`` steps; returns the model and its loss curves."""
    torch.manual_seed(seed * 1000 + 4)  # GarmentsNet is a copy; this seeds the LoRA initialisation
    model = Dresser(base, setting, cfg)
    curves: Dict[str, list] = {"ldm": [], "loc": [], "tex": []}
    if not setting.trained:
        return model, curves
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed * 1000 + 2)  # same batches and noise for every setting of a seed
    abar = schedule(cfg)
    n = view["person"].shape[0]
    latent_hw = (cfg.size // cfg.patch, cfg.size // cfg.patch)
    t0 = time.time()
    for step in range(cfg.steps):
        b = take(view, torch.randint(0, n, (cfg.batch,), generator=gen), cfg.device)
        present = torch.ones(b["masks"].shape[:2], dtype=torch.bool, device=cfg.device)
        z0 = to_latent(b["person"], cfg.patch)
        zt, t, eps = _noised(z0, gen, abar)
        ctx = model.ctx(model.features(b["garments"]), b["garments"].shape[1], want_maps=setting.igl)
        pred = model.dress(zt, t.float(), to_latent(b["pose"], cfg.patch), ctx)
        loss = losses.ldm_loss(pred, z0 if cfg.prediction == "x0" else eps)
        curves["ldm"].append(loss.item())
        if setting.igl:
            loc = losses.localization_loss(ctx.maps, b["masks"], present, latent_hw)
            curves["loc"].append(loc.item())
            loss = loss + cfg.lambda_loc * loc
        sel = abar[t] >= GTL_MIN_ABAR
        if setting.gtl and bool(sel.any()):
            img = to_image(_x0(pred[sel], zt[sel], t[sel], abar, cfg), cfg.patch)
            tex = _texture_loss(model, img, b, sel, present)
            curves["tex"].append(tex.item())
            loss = loss + setting.gtl * tex
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == cfg.steps - 1:
            log.info("seed %d %s step %d/%d loss %.4f (%.0fs)", seed, setting.name, step, cfg.steps, loss.item(),
                     time.time() - t0)
    model.gnet.requires_grad_(False).eval()
    return model, curves


@torch.no_grad()
def sample(model: Dresser, val, cfg: Config, seed: int, chunk: int = 48, regions=None):
    """DDIM (eta 0, ``cfg.sample_steps`` steps, x0 clipped) from the seed's noise, no CFG [choice].

    Garment features are computed once at t=0 and reused at every step [paper].  Runs ``chunk``
    samples at a time (the maps' attention probabilities grow with the square of the tokens); the
    noise is drawn for all samples first, so the result does not depend on ``chunk``.
    Returns images ``[n, 3, S, S]`` in [-1, 1] and maps ``[n, N, S, S]`` (A_k averaged over DA
    layers and over five evenly spaced steps [choice, for time], bilinearly resized; None without garments).
    ``regions`` (``benchmarks/ablation/regions.py``) is told of every step and gives each DA layer its
    regions; it holds every sample's regions, so it runs all samples in one chunk.
    """
    n, size, patch = val["person"].shape[0], cfg.size, cfg.patch
    gen = torch.Generator().manual_seed(seed * 1000 + 3)
    noise = torch.randn((n, 3 * patch ** 2, size // patch, size // patch), generator=gen)
    images, maps = [], []
    chunk = n if regions is not None else chunk
    for a in range(0, n, chunk):
        rows = slice(a, min(n, a + chunk))
        img, m = _ddim(model, noise[rows].to(cfg.device), val["pose"][rows], val["garments"][rows], cfg, regions)
        images.append(img)
        maps.append(m)
    return torch.cat(images), (None if maps[0] is None else torch.cat(maps))


def _ddim(model: Dresser, z, pose, garments, cfg: Config, regions=None):
    n, size, patch = z.shape[0], cfg.size, cfg.patch
    pose = to_latent(pose.to(cfg.device), patch)
    abar = schedule(cfg)
    ts = torch.linspace(abar.numel() - 1, 0, cfg.sample_steps).round().long().to(cfg.device)
    feats = None if model.setting.garments == "none" else model.features(garments.to(cfg.device))
    count = garments.shape[1]
    acc, layers = None, 0
    every = max(1, cfg.sample_steps // 5)
    for i, t in enumerate(ts):
        ctx = Ctx() if feats is None else model.ctx(feats, count, want_maps=i % every == 0)
        if regions is not None and feats is not None:
            regions.begin_step(i)
            ctx.regions = regions.layer
        pred = model.dress(z, t.float().expand(n), pose, ctx)
        for a in ctx.maps.values():
            hw = int(round(a.shape[1] ** 0.5))
            m = F.interpolate(a.transpose(1, 2).reshape(n, count, hw, hw), size=(size, size), mode="bilinear",
                              align_corners=False)
            acc = m if acc is None else acc + m
            layers += 1
        ab = abar[t]
        x0 = _x0(pred, z, t.view(1), abar, cfg).clamp(-1, 1)
        eps = (z - ab.sqrt() * x0) / (1 - ab).sqrt()
        ab_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=z.device)
        z = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    maps = None if acc is None else (acc / layers).cpu()
    return to_image(z, patch).clamp(-1, 1).cpu(), maps
