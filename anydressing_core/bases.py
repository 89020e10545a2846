"""The model families ("bases") AnyDressing tells apart, and the messages that keep them from being mixed.

A base is ``"sd15"`` (SD1.5 and its fine-tunes) or ``"sdxl"`` (SDXL and the family ComfyUI loads as SDXL:
SSD-1B, Segmind Vega, KOALA, Pony, Illustrious, ...). Garment features, AnyDressing weights and garment
latents made for one base mean nothing to the other, so every check names both bases and the fix.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .errors import AnyDressingError

NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}

#: Each base's latent scale: ComfyUI's latent formats and diffusers' ``vae.config.scaling_factor``. ComfyUI's
#: VAE loader gives a TAESD decoder of a base exactly this ``vae_scale``; a full-size VAE carries no such mark.
LATENT_SCALE = {"sd15": 0.18215, "sdxl": 0.13025}

#: SDXL's ADM vector: the pooled CLIP-G embedding (1280) and six 256-wide size/crop embeddings.
SDXL_ADM_CHANNELS = 2816
SDXL_POOLED_CHANNELS = 1280


def name(base: Optional[str]) -> str:
    return NAMES.get(base, f"an unknown base ({base!r})") if base else "an unknown base"


def base_of_unet_config(config: Mapping) -> Optional[str]:
    """The base of a ComfyUI (LDM) ``unet_config`` when its shape says so, else None: SDXL's ADM input
    (2816 channels), or SD1.5's 768-wide text context without ADM."""
    adm = config.get("adm_in_channels")
    if adm == SDXL_ADM_CHANNELS:
        return "sdxl"
    if adm is None and config.get("context_dim") == 768:
        return "sd15"
    return None


def base_of_vae_scale(scale: Optional[float]) -> Optional[str]:
    """The base whose TAESD a VAE with this ``vae_scale`` is, or None (unmarked: a full-size VAE, or 1.0)."""
    if scale is None:
        return None
    for base, value in LATENT_SCALE.items():
        if abs(float(scale) - value) < 1e-4:
            return base
    return None


def check_same_base(subject: str, base: Optional[str], model_base: Optional[str], fix: str) -> None:
    """Refuse what ``subject`` describes (made for ``base``) on a model of ``model_base``, e.g.
    ``subject="the garment features were encoded with"``; when either base is unknown the other checks decide."""
    if base and model_base and base != model_base:
        raise AnyDressingError(f"{subject} {name(base)}, but the MODEL is {name(model_base)}. {fix}")
