"""The frozen pieces of the base model the trainer needs, from LOCAL files only (no downloads).

``model.base`` is either the single-file ``.safetensors`` checkpoint a ComfyUI user samples with (SD1.5 or
SDXL, converted in :mod:`..single_file`) or a diffusers SD1.5 folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .. import base_check
from ..conditioning import added_cond, time_ids
from ..errors import AnyDressingError
from ..single_file import LatentCodec

log = logging.getLogger(__name__)

#: SD1.5's training noise schedule [paper: SD1.5 base], used when the folder has no scheduler/.  SDXL
#: was trained on the same schedule.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@dataclass
class TextConditioning:
    """What the text encoder(s) give the UNet: ``context [B, 77, C]`` and, for SDXL, ``pooled [B, P]``."""

    context: torch.Tensor
    pooled: Optional[torch.Tensor] = None


@dataclass
class Components:
    unet: Any                   # UNet2DConditionModel (becomes the frozen DressingNet; GarmentsNet is a copy)
    codec: LatentCodec          # the VAE, frozen, with ComfyUI's latent scaling
    text_encoders: List[Any]    # SD1.5: [CLIPTextModel]; SDXL: [CLIP-L, OpenCLIP bigG with projection]
    tokenizers: List[Any]       # one per text encoder (CLIPTokenizer or anything with the same __call__)
    scheduler: Any              # DDPMScheduler
    base: str = "sd15"
    #: where the base came from, for the export's metadata: ``{"file"|"folder", "sha256", "bytes"}``
    source: Dict[str, Any] = field(default_factory=dict)
    fingerprint: Optional[Dict[str, Any]] = None  # :func:`..base_check.fingerprint` of the base UNet

    @property
    def vae(self):
        return self.codec.vae

    def to(self, device, dtype) -> "Components":
        self.codec.vae.to(device, dtype=dtype)
        for enc in self.text_encoders:
            enc.to(device, dtype=dtype)
        return self

    def encode_text(self, captions: List[str], device) -> TextConditioning:
        """Captions -> the UNet's text conditioning, as ComfyUI's CLIPTextEncode makes it.

        SD1.5: CLIP-L's last hidden state (after its final LayerNorm).  SDXL: the penultimate hidden
        states of CLIP-L and OpenCLIP bigG side by side (768 + 1280 = 2048), and bigG's projected pooled
        embedding.
        """
        states, pooled = [], None
        with torch.no_grad():
            for tok, enc in zip(self.tokenizers, self.text_encoders):
                ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(device)
                if self.base != "sdxl":
                    states.append(enc(ids)[0])
                    continue
                out = enc(ids, output_hidden_states=True)
                states.append(out.hidden_states[-2])
                if hasattr(out, "text_embeds"):
                    pooled = out.text_embeds
        return TextConditioning(torch.cat(states, dim=-1), pooled)

    def added_cond(self, text: TextConditioning, size) -> Optional[Dict[str, torch.Tensor]]:
        """SDXL's ``added_cond_kwargs`` for images of ``size = (height, width)`` pixels; None for SD1.5."""
        if self.base != "sdxl":
            return None
        b = text.context.shape[0]
        return added_cond(text.pooled, time_ids(int(size[0]), int(size[1]), batch=b, device=text.pooled.device))


def load_components(base: str, tokenizer: str = "") -> Components:
    """The base model from a single-file checkpoint or a diffusers folder (see module docstring)."""
    if not base:
        raise AnyDressingError("model.base is empty: give the .safetensors checkpoint you sample with in ComfyUI "
                               "(SD1.5 or SDXL), or a local diffusers SD1.5 folder")
    root = Path(base).expanduser()
    if root.is_file():
        comp = _from_single_file(root, tokenizer)
    elif root.is_dir():
        comp = _from_folder(root, tokenizer)
    else:
        raise AnyDressingError(f"model.base {root} does not exist; give a checkpoint file or a diffusers folder")
    comp.codec.vae.requires_grad_(False)
    for enc in comp.text_encoders:
        enc.requires_grad_(False)
    return comp


def load_base_unet(base: str):
    """Only the base UNet and what the export records about the base (``.base``, ``.source``,
    ``.fingerprint``): enough to rebuild the trainable module for ``export --checkpoint``."""
    from types import SimpleNamespace

    root = Path(base).expanduser()
    if root.is_file():
        from .. import single_file as sf

        unet, kind = sf.load_unet(root)
        source = {"file": root.name, "sha256": sf.file_sha256(root), "bytes": root.stat().st_size}
    elif (root / "unet").is_dir():
        from diffusers import UNet2DConditionModel

        unet, kind, source = UNet2DConditionModel.from_pretrained(root, subfolder="unet"), "sd15", {"folder": root.name}
    else:
        raise AnyDressingError(f"model.base {root} is neither a checkpoint file nor a diffusers folder with unet/")
    info = SimpleNamespace(base=kind, source=source, fingerprint=base_check.fingerprint(base_check.diffusers_norms(unet)))
    return unet, info


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: v for k, v in SD15_SCHEDULE.items() if k != "set_alpha_to_one"})


def _from_single_file(path: Path, tokenizer: str) -> Components:
    from .. import single_file as sf

    shapes = sf.read_shapes(path)
    base = sf.detect_base(shapes, f"model.base {path}")
    tokenizers = sf.load_tokenizers(sf.tokenizer_dir(tokenizer), base)  # before the heavy work: fail fast
    unet, _ = sf.load_unet(path, shapes)
    codec = sf.load_codec(path, base, shapes)
    encoders = sf.load_text_encoders(path, base)
    digest = sf.file_sha256(path)
    log.info("base %s: %s checkpoint, sha256 %s", path.name, base, digest)
    source = {"file": path.name, "sha256": digest, "bytes": path.stat().st_size}
    return Components(unet, codec, encoders, tokenizers, _scheduler(), base, source,
                      base_check.fingerprint(base_check.diffusers_norms(unet)))


def _from_folder(root: Path, tokenizer: str) -> Components:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [s for s in ("unet", "vae", "text_encoder") if not (root / s).is_dir()]
    if missing:
        raise AnyDressingError(f"base model folder {root} lacks {missing}; it must be a diffusers SD1.5 folder "
                               "(e.g. saved with StableDiffusionPipeline.save_pretrained), or give the single-file "
                               "checkpoint instead; nothing is downloaded")
    tok_dir = Path(tokenizer).expanduser() if tokenizer else root / "tokenizer"
    if not tok_dir.is_dir():
        raise AnyDressingError(f"base model folder {root} has no tokenizer/; set model.tokenizer=FOLDER")
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
    if getattr(unet.config, "addition_embed_type", None) == "text_time":
        raise AnyDressingError(f"{root} is an SDXL diffusers folder; for SDXL give the single-file checkpoint")
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler") if (root / "scheduler").is_dir() \
        else _scheduler()
    codec = LatentCodec(vae, "kl", vae.config.scaling_factor)
    source = {"folder": root.name}
    return Components(unet, codec, [text_encoder], [tok], scheduler, "sd15", source,
                      base_check.fingerprint(base_check.diffusers_norms(unet)))
