"""``AnyDressingXLPipeline``: text + N garments -> image with diffusers SDXL components.

    pipe = AnyDressingXLPipeline(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                                 EulerDiscreteScheduler(...), adapter=None)        # zero-shot
    image = pipe("a woman in a striped shirt", garments=[shirt, jeans], slots=["upper", "lower"],
                 height=1216, width=832, garment_size=(1216, 832), garment_token_budget=4096)

Everything of :class:`.pipeline.AnyDressingPipeline` holds; what SDXL adds is its second text encoder and
the ADM inputs of its UNet (``added_cond_kwargs``: the pooled CLIP-G embedding ``text_embeds [B, 1280]``
and ``time_ids [B, 6]`` = original height, width, crop top, crop left, target height, width):

* sampling: the prompts' pooled embeddings and ``(height, width, 0, 0, height, width)`` of the output, as
  ComfyUI's CLIPTextEncode + KSampler build them (``comfy/model_base.py`` ``SDXL.encode_adm``); the negative
  prompt is encoded like any prompt, also when empty, as ComfyUI does;
* the garment pass [choice]: the empty prompt's pooled embedding and ``(h, w, 0, 0, h, w)`` of the garment's
  own size (:func:`.conditioning.garment_cond`, as the nodes and the trainer build it; docs/SDXL.md says why).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from .conditioning import added_cond, garment_cond, time_ids
from .errors import AnyDressingError
from .keys import base_shape
from .pipeline import AnyDressingPipeline
from .weights import load_weights


class AnyDressingXLPipeline(AnyDressingPipeline):
    """SDXL text-to-image with AnyDressing (DressingNet = ``unet``, an SDXL-family UNet).

    Args:
        unet, vae, text_encoder (CLIP-L), text_encoder_2 (CLIP-G with projection), tokenizer, tokenizer_2,
        scheduler: diffusers / transformers SDXL components.
        adapter: an AnyDressing adapter made for SDXL, or None (zero-shot).
    """

    def __init__(self, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, adapter=None):
        if base_shape(unet.config) != "sdxl":
            raise AnyDressingError("AnyDressingXLPipeline needs an SDXL-family UNet (one with SDXL's text_time "
                                   "add-embedding), got an SD1.5-shaped one; use AnyDressingPipeline for SD1.5")
        if adapter is not None and adapter.meta.base != "sdxl":
            raise AnyDressingError(f"the adapter {adapter.name or ''} was made for {adapter.meta.base}, this pipeline "
                                   "is SDXL; load AnyDressing weights made for SDXL (base=sdxl)")
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        super().__init__(unet, vae, text_encoder, tokenizer, scheduler, adapter)

    @classmethod
    def from_checkpoint(cls, path: str, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                        scheduler) -> "AnyDressingXLPipeline":
        return cls(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, load_weights(path))

    @classmethod
    def from_pipe(cls, pipe, adapter=None) -> "AnyDressingXLPipeline":
        """From a diffusers ``StableDiffusionXLPipeline`` (its components are shared, its UNet gets DA)."""
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2,
                   pipe.scheduler, adapter)

    @torch.no_grad()
    def encode_prompt(self, prompt: Union[str, List[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Text -> ``(hidden [B, 77, 768 + 1280], pooled [B, 1280])``: both encoders' penultimate hidden states,
        concatenated, and CLIP-G's projected pooled output."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype)

    def text_context(self, prompt: str) -> torch.Tensor:
        return self.encode_prompt(prompt)[0]

    def garment_conditioning(self, size: Sequence[int], count: int) -> dict:
        """The garment pass's ADM inputs for ``count`` garments of ``size`` = (height, width) pixels."""
        _, pooled = self.encode_prompt("")
        return {"added_cond_kwargs": garment_cond(pooled, count, size)}

    @torch.no_grad()
    def encode_garments(self, garments, slots: Sequence[str], weights: Optional[Sequence[float]] = None,
                        size: Sequence[int] = (1024, 768), masks: Optional[Sequence] = None, token_budget: int = 0):
        """As :meth:`AnyDressingPipeline.encode_garments`; SDXL's default garment size is 768x1024."""
        return super().encode_garments(garments, slots, weights, size, masks, token_budget)

    def prompt_conditioning(self, prompt, negative_prompt: str, prompt_embeds, negative_prompt_embeds, cfg: bool,
                            height: int, width: int):
        """``prompt_embeds`` / ``negative_prompt_embeds``, when given, are ``(hidden, pooled)`` pairs."""
        cond, pooled = prompt_embeds if prompt_embeds is not None else \
            self.encode_prompt(prompt if prompt is not None else "")
        b = cond.shape[0]
        if cfg:
            uncond, upooled = negative_prompt_embeds if negative_prompt_embeds is not None else \
                self.encode_prompt(negative_prompt)
            cond = torch.cat([uncond.expand(b, -1, -1), cond])
            pooled = torch.cat([upooled.expand(b, -1), pooled])
        ids = time_ids(height, width, batch=cond.shape[0], device=self.device)
        return cond, {"added_cond_kwargs": added_cond(pooled, ids)}, b

    def __call__(self, *args, height: int = 1024, width: int = 1024, garment_size: Sequence[int] = (1024, 768),
                 **kwargs):
        """As :meth:`AnyDressingPipeline.__call__`, with SDXL's default sizes."""
        return super().__call__(*args, height=height, width=width, garment_size=garment_size, **kwargs)
