"""``AnyDressingPipeline``: text + N garments -> image with diffusers SD1.5 components.

    pipe = AnyDressingPipeline(unet, vae, text_encoder, tokenizer, DDIMScheduler(...),
                               adapter=load_weights("my.safetensors"))   # or adapter=None: zero-shot
    image = pipe("a woman in a striped shirt", garments=[shirt, jeans], slots=["upper", "lower"],
                 num_inference_steps=30, guidance_scale=6.0, strength=0.7)  # [paper] inference settings

Garments are pictures: ``[H, W, C]`` arrays (C = 1, 3 or 4; float 0..1 or uint8) or ``[C, H, W]``
float tensors in [0, 1], with optional masks (``garment_masks``); each is normalised and placed on the
encode canvas by the same functions as the ComfyUI nodes (:mod:`.garments`: mask or alpha or automatic
mask, crop, plain background, pad, resize), so the two paths encode identical garment pictures.
GarmentsNet runs once at t=0 [paper]; K'/V' are projected once per call (adapter projections or,
zero-shot, the UNet's own to_k/to_v); classifier-free guidance drops text AND garments in the
unconditional branch [paper].  The attention math is :mod:`.attention` (the same code as the nodes).
"""

from __future__ import annotations

import copy
import logging
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from .attention import DAForm
from .budget import apply_budget
from .checkpoint import AnyDressingAdapter
from .diffusers_model import GarmentsNet, attn1_modules, install_dressing_attention
from .errors import AnyDressingError
from .features import GarmentsNetContext
from .garments import Garment, normalize_garment, place_garment
from .weights import load_weights

log = logging.getLogger(__name__)


def unet_channels(unet) -> dict:
    """``{key: C}`` attn1 widths of a diffusers UNet."""
    return {k: m.to_q.in_features for k, m in attn1_modules(unet).items()}


class AnyDressingPipeline:
    """SD1.5 text-to-image with AnyDressing (DressingNet = ``unet``, frozen; GarmentsNet built here).

    Args:
        unet, vae, text_encoder, tokenizer, scheduler: diffusers / transformers SD1.5 components.
        adapter: :class:`~.checkpoint.AnyDressingAdapter` or None (zero-shot: GarmentsNet is a copy
            of ``unet``, K'/V' from ``unet``'s own projections, joint form [choice, as the nodes]).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, adapter: Optional[AnyDressingAdapter] = None):
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = unet, vae, text_encoder, tokenizer, scheduler
        self.adapter = adapter
        if adapter is not None:
            adapter.check_layers(unet_channels(unet), "this UNet")
        gunet = copy.deepcopy(unet)  # before DA is installed on unet
        context = "none"
        if adapter is not None:
            context = adapter.meta.garments_net_context
            if adapter.garments_net is not None:
                missing, unexpected = gunet.load_state_dict(adapter.garments_net, strict=False)
                if missing or unexpected:
                    raise AnyDressingError(
                        f"GarmentsNet weights of {adapter.name or 'the adapter'} do not fit this UNet: "
                        f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if context == GarmentsNetContext.IMAGE_TOKENS:
            log.warning("AnyDressing: GarmentsNet context 'image_tokens' (IMAGDressing resampler) runs in ComfyUI only; "
                        "running its cross-attention on the empty prompt instead (docs/FORMAT.md)")
        gunet.requires_grad_(False)
        self.garments_net = GarmentsNet(gunet, context=context, gfe=adapter.gfe if adapter else None)
        form = adapter.form if adapter is not None else DAForm.JOINT
        self.dressing = install_dressing_attention(unet, adapter.projections if adapter else None, trainable=False,
                                                   form=form)

    @classmethod
    def from_pipe(cls, pipe, adapter: Optional[AnyDressingAdapter] = None) -> "AnyDressingPipeline":
        """From a diffusers ``StableDiffusionPipeline`` (its components are shared, its UNet gets DA)."""
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, adapter)

    @classmethod
    def from_checkpoint(cls, path: str, unet, vae, text_encoder, tokenizer, scheduler) -> "AnyDressingPipeline":
        return cls(unet, vae, text_encoder, tokenizer, scheduler, load_weights(path))

    @property
    def device(self):
        return next(self.unet.parameters()).device

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for SD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_prompt(self, prompt: Union[str, List[str]]) -> torch.Tensor:
        """Text -> ``[B, 77, D]`` CLIP hidden states."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> scaled latents ``[N, 4, H/f, W/f]`` (distribution mean)."""
        x = (images.to(self.device, self.vae.dtype) * 2 - 1)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    @staticmethod
    def garment_records(garments, slots: Sequence[str], weights: Optional[Sequence[float]] = None,
                        masks: Optional[Sequence] = None) -> List[Garment]:
        """Normalised garment records (:func:`.garments.normalize_garment`), one per picture."""
        pictures = list(garments)
        if len(slots) != len(pictures):
            raise AnyDressingError(f"{len(pictures)} garment pictures but {len(slots)} slots; give one slot each")
        weights = [1.0] * len(pictures) if weights is None else list(weights)
        masks = [None] * len(pictures) if masks is None else list(masks)
        if len(weights) != len(pictures) or len(masks) != len(pictures):
            raise AnyDressingError(f"{len(pictures)} garment pictures need as many weights and masks "
                                   f"(got {len(weights)} weights, {len(masks)} masks)")
        records = []
        for i, (picture, slot, weight, mask) in enumerate(zip(pictures, slots, weights, masks)):
            if torch.is_tensor(picture):  # [C, H, W] in 0..1 -> [H, W, C]
                picture = picture.detach().float().cpu().permute(1, 2, 0).numpy()
            if torch.is_tensor(mask):
                mask = mask.detach().float().cpu().numpy()
            name = f"{i + 1}:{slot}"
            rgb, m = normalize_garment(picture, mask, label=f"garment {name}")
            records.append(Garment(image=rgb, slot=slot, weight=float(weight), mask=m, name=name))
        return records

    def text_context(self, prompt: str) -> torch.Tensor:
        """The cross-attention context of ``prompt``, ``[1, 77, D]`` (a GarmentsNet with a text context reads it)."""
        return self.encode_prompt(prompt)

    def garment_conditioning(self, size: Sequence[int], count: int) -> dict:
        """Extra UNet inputs of the garment pass over ``count`` garments of ``size`` = (height, width) pixels:
        none on SD1.5."""
        return {}

    @torch.no_grad()
    def encode_garments(self, garments, slots: Sequence[str], weights: Optional[Sequence[float]] = None,
                        size: Sequence[int] = (512, 384), masks: Optional[Sequence] = None, token_budget: int = 0):
        """Garment pictures -> :class:`~.features.GarmentFeatures` (once per call); ``size`` is (height, width).
        At most ``token_budget`` garment tokens per layer (:mod:`.budget`; 0 = all)."""
        records = self.garment_records(garments, slots, weights, masks)
        height, width = int(size[0]), int(size[1])
        placed = [place_garment(g.image, g.mask, width, height)[0] for g in records]
        images = torch.from_numpy(np.stack(placed)).permute(0, 3, 1, 2)  # [N, 3, H, W] in 0..1
        latents = self.encode_images(images).to(self.dtype)
        ctx = None
        if self.garments_net.context != GarmentsNetContext.NONE:
            ctx = self.text_context("")
        feats = self.garments_net.encode(latents, [g.slot for g in records], encoder_hidden_states=ctx,
                                         **self.garment_conditioning(size, len(records)))
        feats.garments = records
        if self.adapter is not None:
            return apply_budget(self.adapter.attach(feats), token_budget)
        feats.form = DAForm.JOINT
        return apply_budget(feats, token_budget)

    def prompt_conditioning(self, prompt, negative_prompt: str, prompt_embeds, negative_prompt_embeds, cfg: bool,
                            height: int, width: int):
        """``(encoder_hidden_states [B or 2B, 77, D], extra UNet kwargs, B)``; with CFG the unconditional rows
        come first."""
        cond = prompt_embeds if prompt_embeds is not None else self.encode_prompt(prompt if prompt is not None else "")
        b = cond.shape[0]
        if not cfg:
            return cond, {}, b
        uncond = negative_prompt_embeds if negative_prompt_embeds is not None else self.encode_prompt(negative_prompt)
        return torch.cat([uncond.expand(b, -1, -1), cond]), {}, b

    @torch.no_grad()
    def __call__(self, prompt: Union[str, List[str], None] = None, garments=None, slots: Sequence[str] = ("upper",),
                 weights: Optional[Sequence[float]] = None, negative_prompt: str = "", num_inference_steps: int = 30,
                 guidance_scale: float = 6.0, strength: Optional[float] = None, height: int = 768, width: int = 576,
                 garment_size: Sequence[int] = (512, 384), generator: Optional[torch.Generator] = None,
                 prompt_embeds: Optional[torch.Tensor] = None, negative_prompt_embeds: Optional[torch.Tensor] = None,
                 form: Optional[str] = None, region_masks: Optional[torch.Tensor] = None,
                 latents: Optional[torch.Tensor] = None, output_type: str = "pt",
                 garment_masks: Optional[Sequence] = None, garment_token_budget: int = 0):
        """Returns images ``[B, 3, height, width]`` in [0, 1] (``output_type="latent"``: latents)."""
        f = self.vae_scale
        if height % f or width % f:
            raise AnyDressingError(f"height {height} and width {width} must be multiples of {f}")
        cfg = guidance_scale > 1.0
        ctx, unet_kwargs, b = self.prompt_conditioning(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                                       cfg, height, width)
        feats = None
        if garments is not None and len(garments) > 0:
            feats = self.encode_garments(garments, slots, weights, garment_size, garment_masks, garment_token_budget)
        lam = strength if strength is not None else (self.adapter.default_strength if self.adapter else 0.7)
        rows = torch.tensor([False] * b + [True] * b) if cfg else None  # [paper] garments dropped with the text
        shape = (b, self.unet.config.in_channels, height // f, width // f)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        with self.dressing.use(feats, strength=lam, form=form, region_masks=region_masks,
                               latent_hw=shape[2:], garment_rows=rows):
            for t in self.scheduler.timesteps:
                x = torch.cat([latents] * 2) if cfg else latents
                x = self.scheduler.scale_model_input(x, t)
                eps = self.unet(x, t, encoder_hidden_states=ctx, **unet_kwargs).sample
                if cfg:
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + guidance_scale * (e_c - e_u)
                latents = self.scheduler.step(eps, t, latents).prev_sample
        if output_type == "latent":
            return latents
        image = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((image.float() + 1) / 2).clamp(0, 1)
