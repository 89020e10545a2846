"""The AnyDressing training objective [paper, Eqs. 7-13].

``L = L_ldm + lambda1 * L_loc + lambda2 * (L_dists + L_edge)`` with lambda1 = 0.01 and
lambda2 = 0.001 [paper].  DISTS is implemented here from its published definition (Ding et al.,
"Image Quality Assessment: Unifying Structure and Texture Similarity", TPAMI 2020) on a torchvision
VGG16 whose weights the user provides as a local file; nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import masks_to_tokens, tokens_hw
from .errors import AnyDressingError

log = logging.getLogger(__name__)

LAMBDA_LOC = 0.01      # [paper] weight of the instance-level localization loss
LAMBDA_TEXTURE = 0.001  # [paper] weight of the texture loss (DISTS + edges)
GTL_MAX_T = 350         # [paper] texture loss only for t <= 350 of 1000


def ldm_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_ldm: mean squared error between predicted and true noise, ``[B, 4, h, w]`` each -> scalar."""
    return F.mse_loss(eps_pred.float(), eps.float())


def localization_loss(maps: Mapping[object, torch.Tensor], masks: torch.Tensor, present: torch.Tensor,
                      latent_hw: Sequence[int], rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """IGL, L_loc [paper, Eq. 9]: ``(1/N) sum_k ||A_k - M_k||^2``, averaged over DA layers.

    Args:
        maps: per layer, ``A [B, T, N]`` (head-averaged DA probabilities summed over garment k's
            tokens, as :func:`anydressing_core.attention.garment_maps` returns them).
        masks: ``[B, N, H, W]`` person-image masks M_k (resized here to each layer by area).
        present: ``[B, N]`` bool, False for padded garment slots.
        latent_hw: the latent size, to find each layer's height and width.
        rows: ``[B]`` bool, the rows that carry garments (CFG-dropped rows are left out) [choice].

    Returns a scalar: per layer, mean over pixels [choice] of the squared error, mean over the
    present garments of each row, mean over rows; then mean over layers.
    """
    if not maps:
        raise AnyDressingError("no garment attention maps were recorded; is Dressing-Attention installed?")
    sel = present.clone()
    if rows is not None:
        sel &= rows.view(-1, 1)
    row_ok = sel.any(dim=1)
    if not bool(row_ok.any()):
        return next(iter(maps.values())).sum() * 0.0
    total = 0.0
    for a in maps.values():
        m = masks_to_tokens(masks, tokens_hw(latent_hw, a.shape[1])).to(a.dtype)  # [B, T, N]
        err = (a - m).pow(2).mean(dim=1)                                           # [B, N]
        w = sel.to(err.dtype)
        per_row = (err * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        total = total + per_row[row_ok].mean()
    return total / len(maps)


def predict_x0(z_t: torch.Tensor, eps_pred: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """One-step estimate [paper, Eq. 10]: ``(z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``; ``alpha_bar [B]``."""
    ab = alpha_bar.to(z_t.dtype).view(-1, *([1] * (z_t.ndim - 1)))
    return (z_t - (1 - ab).sqrt() * eps_pred) / ab.sqrt()


def edge_loss(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, edges: torch.Tensor,
              present: torch.Tensor) -> torch.Tensor:
    """High-frequency loss [paper, Eq. 12]: ``(1/N) sum_k ||I_hat * M'_k - I * M'_k||^2``, ``M'_k = M_k * edges``.

    ``pred, target [B, 3, H, W]``, ``masks [B, N, H, W]``, ``edges [B, 1, H, W]`` (Canny of the
    ground truth), ``present [B, N]``.  Squared error is averaged over channels and pixels [choice].
    Returns ``[B]``: the mean over each row's present garments.
    """
    m = (masks * edges).unsqueeze(2)                                  # [B, N, 1, H, W]
    diff = (pred.float() - target.float()).unsqueeze(1) * m           # [B, N, 3, H, W]
    err = diff.pow(2).mean(dim=(2, 3, 4))                             # [B, N]
    w = present.to(err.dtype)
    return (err * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class L2Pool(nn.Module):
    """DISTS's L2 pooling: ``sqrt(conv(x^2, g) + eps)``, g = outer(hanning(5)[1:-1]) normalised, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.channels = channels

    def forward(self, x):
        out = F.conv2d(x.pow(2), self.filter.to(x.dtype), stride=2, padding=1, groups=self.channels)
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """Deep Image Structure and Texture Similarity on a VGG16 backbone (max-pools replaced by L2 pools).

    ``D(x, y) = 1 - sum_i sum_j (alpha_ij l(x_ij, y_ij) + beta_ij s(x_ij, y_ij))`` over the input and
    the relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 features (channels 3, 64, 128, 256, 512, 512), with
    ``l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)`` and ``s = (2 cov_xy + c2) / (var_x + var_y + c2)``
    over the spatial axes, c1 = c2 = 1e-6, and ``sum(alpha) + sum(beta) = 1``.

    The learned alpha/beta of the published model can be given as ``alpha_beta`` (a file holding
    tensors ``alpha`` and ``beta`` of shape ``[1, 1475, 1, 1]``); without it they are uniform
    [choice: no download is allowed, so the untrained, equal weighting is the default].
    Inputs are images in [0, 1], ``[B, 3, H, W]``; the output is ``[B]``.  The network is frozen.
    """

    CHANNELS = (3, 64, 128, 256, 512, 512)
    # torchvision vgg16().features slices for relu1_2 | relu2_2 | relu3_3 | relu4_3 | relu5_3; the
    # max-pool at the start of each later slice is replaced by an L2 pool
    SLICES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))

    def __init__(self, vgg_state: Optional[Mapping[str, torch.Tensor]] = None, alpha_beta: Optional[Mapping] = None,
                 random_weights: bool = False):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        if vgg_state is None and not random_weights:
            raise AnyDressingError("DISTS needs VGG16 weights: pass a state dict (see load_dists) or random_weights=True")
        features = make_layers(cfgs["D"], batch_norm=False)  # = vgg16().features, without the 120M-weight head
        if vgg_state is not None:
            state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in vgg_state.items()}
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            missing, unexpected = features.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise AnyDressingError(
                    f"the VGG16 weight file does not fit torchvision's vgg16().features: missing {missing[:4]}, "
                    f"unexpected {unexpected[:4]}; give torchvision's vgg16 weights (vgg16-397923af.pth) or the "
                    "same keys in a .safetensors file")
        stages = []
        for i, (a, b) in enumerate(self.SLICES):
            layers = [L2Pool(self.CHANNELS[i])] if i else []
            layers += list(features[a:b])
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        total = sum(self.CHANNELS)
        if alpha_beta is not None:
            alpha, beta = alpha_beta["alpha"].float().reshape(-1), alpha_beta["beta"].float().reshape(-1)
            if alpha.numel() != total or beta.numel() != total:
                raise AnyDressingError(f"DISTS alpha/beta must have {total} values each, got {alpha.numel()}/{beta.numel()}")
        else:
            alpha = beta = torch.full((total,), 1.0 / (2 * total))
        s = alpha.sum() + beta.sum()
        self.register_buffer("alpha", alpha / s, persistent=False)
        self.register_buffer("beta", beta / s, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor):
        feats = [x]
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c1 = c2 = 1e-6
        fx, fy = self.features(x), self.features(y)
        alphas = torch.split(self.alpha, list(self.CHANNELS))
        betas = torch.split(self.beta, list(self.CHANNELS))
        score = 0.0
        for a, b, al, be in zip(fx, fy, alphas, betas):
            a, b = a.float(), b.float()
            mx, my = a.mean(dim=(2, 3)), b.mean(dim=(2, 3))
            vx = (a - mx[..., None, None]).pow(2).mean(dim=(2, 3))
            vy = (b - my[..., None, None]).pow(2).mean(dim=(2, 3))
            cov = (a * b).mean(dim=(2, 3)) - mx * my
            l_term = (2 * mx * my + c1) / (mx.pow(2) + my.pow(2) + c1)
            s_term = (2 * cov + c2) / (vx + vy + c2)
            score = score + (l_term * al).sum(dim=1) + (s_term * be).sum(dim=1)
        return 1.0 - score


def load_dists(vgg_path, alpha_beta_path=None) -> DISTS:
    """DISTS with VGG16 weights from a LOCAL file (.safetensors, or a torch .pth read with weights_only)."""
    if not vgg_path:
        raise AnyDressingError(
            "the texture loss (GTL) needs VGG16 weights for DISTS, but no file was given. Set "
            "loss.vgg16_path to a local copy of torchvision's vgg16 weights (e.g. vgg16-397923af.pth), "
            "or disable GTL with loss.texture_weight=0")
    def read(p):
        p = Path(p).expanduser()
        if not p.is_file():
            raise AnyDressingError(f"weight file {p} does not exist; download it yourself and give its path "
                                   "(nothing is fetched automatically)")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p))
        return torch.load(str(p), map_location="cpu", weights_only=True)
    return DISTS(read(vgg_path), read(alpha_beta_path) if alpha_beta_path else None)


def dists_loss(dists: DISTS, pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor,
               present: torch.Tensor) -> torch.Tensor:
    """Perceptual term [paper, Eq. 11]: ``(1/N) sum_k DISTS(I_hat * M_k, I * M_k)``.

    ``pred, target [B, 3, H, W]`` in [-1, 1]; ``masks [B, N, H, W]``; returns ``[B]``.
    """
    b, n = masks.shape[:2]
    m = masks.unsqueeze(2)                                            # [B, N, 1, H, W]
    p = ((pred.float().unsqueeze(1) + 1) / 2 * m).flatten(0, 1)       # [B*N, 3, H, W] in [0, 1]
    t = ((target.float().unsqueeze(1) + 1) / 2 * m).flatten(0, 1)
    keep = present.flatten()
    d = torch.zeros(b * n, dtype=torch.float32, device=pred.device)
    if bool(keep.any()):
        d = d.index_put((keep.nonzero().flatten(),), dists(p[keep], t[keep]))
    d = d.view(b, n)
    w = present.to(d.dtype)
    return (d * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def cfg_keep(batch: int, drop_rate: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """CFG dropout: ``[B]`` bool, False where text AND garments are both dropped [paper: dropped together;
    rate is a choice, ~10%]."""
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"CFG drop rate {drop_rate} must be in [0, 1)")
    return (torch.rand(batch, generator=generator) >= drop_rate).to(device)
