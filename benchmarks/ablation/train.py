"""Data, noise schedule, training and DDIM sampling for the ablation benchmark.

Settings [paper, Table 3, plus two references]:

* ``none``: the frozen pose-conditioned base, no garments (what chance looks like).
* ``zero_shot``: GarmentsNet = the base itself, K' = Wk, V' = Wv, nothing trained [choice, METHOD.md].
* ``base``: trainable GarmentsNet (a copy of the base) and Wk', Wv'; no garment-specific LoRA.
* ``gfe``: + one LoRA set per slot in GarmentsNet (``anydressing_core.gfe.GFELoRA``).
* ``gfe_igl``: + ``lambda1 * L_loc`` (``anydressing_core.losses.localization_loss``).
* ``gfe_igl_gtl``: + ``lambda2 * L_texture`` on the one-step estimate for t <= 350
  (``losses.edge_loss``; ``losses.dists_loss`` too when VGG16 weights are given).

DressingNet (the base) is frozen in every setting [paper].  All trained settings start from the
same base weights, see the same batches and the same number of steps (the fixed budget).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Dict, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from anydressing_core import losses
from anydressing_core.gfe import DAProjections, GFELoRA
from anydressing_core.synthetic import pose_image, render_sample
from .model import DA_KEYS, Ctx, TinyUNet, encode_garments, to_image, to_latent

log = logging.getLogger(__name__)

SLOTS = ("upper", "lower", "hat")
SETTINGS = ("none", "zero_shot", "base", "gfe", "gfe_igl", "gfe_igl_gtl")
TRAINED = ("base", "gfe", "gfe_igl", "gfe_igl_gtl")
VAL_OFFSET = 1_000_000  # validation samples are indices the training split never draws


@dataclass
class Config:
    size: int = 32
    channels: int = 32
    n_train: int = 2000
    n_val: int = 48
    base_steps: int = 800
    steps: int = 800
    batch: int = 8
    lr_base: float = 1e-3     # [choice] tiny nets from scratch
    lr: float = 1e-3          # [choice] GarmentsNet + Wk', Wv' (paper: 5e-5 on SD1.5)
    rank: int = 8             # [choice] GFE LoRA rank C/4 (paper's sibling: 64 of 320 on SD1.5)
    alpha: float = 8.0
    lambda_loc: float = losses.LAMBDA_LOC
    lambda_tex: float = losses.LAMBDA_TEXTURE
    sample_steps: int = 20
    strength: float = 1.0     # [choice] lambda as in training; the paper uses 0.7 at inference on SD
    prediction: str = "x0"    # [choice] "x0" or "eps" (the paper's); see docs/BENCHMARK.md
    base_reference: float = 0.5  # [choice] share of base steps that attend to a mirrored copy (see train_base)
    seed: int = 0
    vgg16: Optional[str] = None


def make_data(count: int, size: int, seed: int, offset: int = 0) -> Dict[str, torch.Tensor]:
    """Render ``count`` three-garment samples as tensors (images in [-1, 1]).

    Returns person ``[n, 3, S, S]``, pose ``[n, 3, S, S]``, garments ``[n, 3, 3, S, S]``,
    masks ``[n, 3, S, S]`` (person-image M_k), garment_masks ``[n, 3, S, S]``, edges
    ``[n, 1, S, S]`` (Canny of the person image, thresholds 50/150 [choice]).
    """
    person, pose, gar, masks, gmasks, edges = [], [], [], [], [], []
    for i in range(count):
        s = render_sample(offset + i, size, seed, slots=SLOTS)
        person.append(s.person)
        pose.append(pose_image(s.keypoints, size))
        gar.append(np.stack([g.image for g in s.garments]))
        masks.append(np.stack([g.mask for g in s.garments]))
        gmasks.append(np.stack([g.garment_mask for g in s.garments]))
        edges.append(cv2.Canny(cv2.cvtColor(s.person, cv2.COLOR_RGB2GRAY), 50, 150) > 0)
    img = lambda a: torch.from_numpy(np.stack(a)).float().div(127.5).sub(1.0)  # noqa: E731
    return {
        "person": img(person).permute(0, 3, 1, 2).contiguous(),
        "pose": img(pose).permute(0, 3, 1, 2).contiguous(),
        "garments": img(gar).permute(0, 1, 4, 2, 3).contiguous(),
        "masks": torch.from_numpy(np.stack(masks)).float(),
        "garment_masks": torch.from_numpy(np.stack(gmasks)).float(),
        "edges": torch.from_numpy(np.stack(edges)).float().unsqueeze(1),
    }


def alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """SD1.5's scaled-linear schedule (beta 0.00085..0.012) [paper's base], ``[1000]``."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def _noised(z0, gen, abar):
    t = torch.randint(0, abar.numel(), (z0.shape[0],), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    ab = abar[t].view(-1, 1, 1, 1)
    return ab.sqrt() * z0 + (1 - ab).sqrt() * eps, t, eps


def _check_prediction(cfg: Config) -> None:
    if cfg.prediction not in ("x0", "eps"):
        raise ValueError(f"prediction {cfg.prediction!r} is not one of 'x0', 'eps'")


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


def train_base(data, cfg: Config) -> TinyUNet:
    """Pose-conditioned person denoiser: the frozen DressingNet (stands in for SD1.5).

    [choice] On a ``cfg.base_reference`` share of steps its self-attention also sees the tokens of a
    mirrored copy of the target (the net itself encodes it at t=0, its own Wk/Wv project it: the
    zero-shot DA of METHOD.md with N = 1).  SD1.5 learned to copy appearance through
    self-attention from web-scale data; a tiny net trained for minutes has not, and without it
    its frozen layers could not use garment tokens at this budget (measured: confusion stayed at
    chance after 450 DA steps).  Every setting shares this base, so the ablation stays fair.
    """
    _check_prediction(cfg)
    torch.manual_seed(cfg.seed)
    net = TinyUNet(cfg.channels)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr_base)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    abar = alphas_cumprod()
    n = data["person"].shape[0]
    t0 = time.time()
    for step in range(cfg.base_steps):
        idx = torch.randint(0, n, (cfg.batch,), generator=gen)
        z0 = to_latent(data["person"][idx])
        zt, t, eps = _noised(z0, gen, abar)
        ctx = None
        if torch.rand((), generator=gen).item() < cfg.base_reference:
            feats = encode_garments(net, data["person"][idx].flip(-1).unsqueeze(1))
            ctx = Ctx(mode="dress", garments=feats, count=1, proj=_OwnKV(net), strength=1.0)
        pred = net(zt, t.float(), to_latent(data["pose"][idx]), ctx)
        loss = F.mse_loss(pred, z0 if cfg.prediction == "x0" else eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.base_steps - 1:
            log.info("base step %d/%d loss %.4f (%.0fs)", step, cfg.base_steps, loss.item(), time.time() - t0)
    net.requires_grad_(False)
    return net.eval()


class Dresser:
    """GarmentsNet + Wk'/Wv' (+ GFE LoRA) around a frozen DressingNet."""

    def __init__(self, base: TinyUNet, setting: str, cfg: Config):
        self.setting, self.cfg, self.dress = setting, cfg, base
        blocks = base.blocks()
        trainable = setting in TRAINED
        self.gnet = copy.deepcopy(base).requires_grad_(True).train() if trainable else base
        self.proj = DAProjections.from_modules({k: b.attn1.to_k for k, b in blocks.items()},
                                               {k: b.attn1.to_v for k, b in blocks.items()}, trainable=trainable)
        self.lora = GFELoRA({k: cfg.channels for k in DA_KEYS}, SLOTS, rank=cfg.rank, alpha=cfg.alpha) \
            if setting.startswith("gfe") else None
        self.dists = None
        if setting == "gfe_igl_gtl" and cfg.vgg16:
            self.dists = losses.load_dists(cfg.vgg16)

    def parameters(self):
        params = list(self.gnet.parameters()) + list(self.proj.parameters())
        return params + (list(self.lora.parameters()) if self.lora is not None else [])

    def features(self, garments: torch.Tensor):
        b, n = garments.shape[:2]
        ids = None
        if self.lora is not None:
            ids = self.lora.slot_ids(list(SLOTS) * b)
        return encode_garments(self.gnet, garments, ids, self.lora)

    def ctx(self, feats, count: int, want_maps: bool) -> Ctx:
        return Ctx(mode="dress", garments=feats, count=count, proj=self.proj, strength=self.cfg.strength,
                   want_maps=want_maps)


def train_setting(base: TinyUNet, data, setting: str, cfg: Config) -> (Dresser, Dict[str, list]):
    """Train one ablation setting for ``cfg.steps`` steps; returns the model and loss curves."""
    model = Dresser(base, setting, cfg)
    curves: Dict[str, list] = {"ldm": [], "loc": [], "tex": []}
    if setting not in TRAINED:
        return model, curves
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # same batches and noise for every setting
    abar = alphas_cumprod()
    use_loc, use_tex = setting in ("gfe_igl", "gfe_igl_gtl"), setting == "gfe_igl_gtl"
    n = data["person"].shape[0]
    latent_hw = (cfg.size // 2, cfg.size // 2)
    t0 = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch,), generator=gen)
        garments, masks = data["garments"][idx], data["masks"][idx]
        present = torch.ones(masks.shape[:2], dtype=torch.bool)
        z0 = to_latent(data["person"][idx])
        zt, t, eps = _noised(z0, gen, abar)
        ctx = model.ctx(model.features(garments), garments.shape[1], want_maps=use_loc)
        pred = model.dress(zt, t.float(), to_latent(data["pose"][idx]), ctx)
        loss = losses.ldm_loss(pred, z0 if cfg.prediction == "x0" else eps)
        curves["ldm"].append(loss.item())
        if use_loc:
            loc = losses.localization_loss(ctx.maps, masks, present, latent_hw)
            curves["loc"].append(loc.item())
            loss = loss + cfg.lambda_loc * loc
        if use_tex:
            sel = t <= losses.GTL_MAX_T
            if bool(sel.any()):
                img = to_image(_x0(pred[sel], zt[sel], t[sel], abar, cfg))
                tex = losses.edge_loss(img, data["person"][idx][sel], masks[sel], data["edges"][idx][sel], present[sel])
                if model.dists is not None:
                    tex = tex + losses.dists_loss(model.dists, img, data["person"][idx][sel], masks[sel], present[sel])
                tex = tex.mean()
                curves["tex"].append(tex.item())
                loss = loss + cfg.lambda_tex * tex
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("%s step %d/%d loss %.4f (%.0fs)", setting, step, cfg.steps, loss.item(), time.time() - t0)
    model.gnet.requires_grad_(False).eval()
    return model, curves


@torch.no_grad()
def sample(model: Dresser, data, cfg: Config, setting: str, regions=None):
    """DDIM (eta 0, ``cfg.sample_steps`` steps, x0 clipped) from fixed noise, no CFG [choice].

    Garment features are computed once at t=0 and reused at every step [paper].
    Returns images ``[n, 3, S, S]`` in [-1, 1] and maps ``[n, N, S, S]`` (A_k averaged over DA
    layers and over five evenly spaced steps [choice, for time], bilinearly resized; None for ``none``).
    ``regions`` (``benchmarks/ablation/regions.py``) is told of every step and gives each DA layer its regions.
    """
    n, size = data["person"].shape[0], cfg.size
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    z = torch.randn((n, 12, size // 2, size // 2), generator=gen)
    pose = to_latent(data["pose"])
    abar = alphas_cumprod()
    ts = torch.linspace(abar.numel() - 1, 0, cfg.sample_steps).round().long()
    feats = None if setting == "none" else model.features(data["garments"])
    count = data["garments"].shape[1]
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
        ab_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        z = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    maps = None if acc is None else acc / layers
    return to_image(z).clamp(-1, 1), maps
