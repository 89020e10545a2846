"""The frozen pieces of SD1.5 the trainer needs, loaded from a LOCAL diffusers folder (no downloads)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

import torch

from ..errors import AnyDressingError

log = logging.getLogger(__name__)

#: SD1.5's training noise schedule [paper: SD1.5 base], used when the folder has no scheduler/.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@dataclass
class Components:
    unet: Any            # UNet2DConditionModel (becomes the frozen DressingNet; GarmentsNet is a copy)
    vae: Any             # AutoencoderKL, frozen
    text_encoder: Any    # CLIPTextModel, frozen
    tokenizer: Any       # CLIPTokenizer (or anything with the same __call__)
    scheduler: Any       # DDPMScheduler

    def encode_text(self, captions: List[str], device) -> torch.Tensor:
        """Captions -> ``[B, max_len, C]`` last hidden states of the text encoder."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            return self.text_encoder(ids)[0]


def load_components(base: str) -> Components:
    """Load ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` (and ``scheduler/``) from ``base``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not base:
        raise AnyDressingError("model.base is empty: give the path of a local diffusers SD1.5 folder "
                               "(with unet/, vae/, text_encoder/, tokenizer/)")
    root = Path(base).expanduser()
    missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer") if not (root / s).is_dir()]
    if missing:
        raise AnyDressingError(f"base model folder {root} lacks {missing}; it must be a diffusers SD1.5 folder "
                               "(e.g. saved with StableDiffusionPipeline.save_pretrained); nothing is downloaded")
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
    if (root / "scheduler").is_dir():
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    else:
        scheduler = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULE.items() if k != "set_alpha_to_one"})
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    return Components(unet, vae, text_encoder, tokenizer, scheduler)
