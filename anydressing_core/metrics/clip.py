"""The paper's metrics on real images: CLIP-T, CLIP-I, CLIP-I*, CLIP-AS.

* CLIP-T [paper]: cosine similarity of the generated image and the prompt.
* CLIP-I [paper]: cosine similarity of the generated image and a garment image (mean over garments).
* CLIP-I* [paper]: each garment against its own body region of the generated image (a crop from
  the given mask, or from pose keypoints), averaged over garments.
* CLIP-AS [paper]: an aesthetic head on the L2-normalised CLIP image embedding
  (:mod:`anydressing_core.metrics.aesthetic`; LAION's predictor expects CLIP ViT-L/14).

Models come from LOCAL paths only (``local_files_only=True``); nothing is downloaded.  The
arithmetic (:func:`cosine`, :func:`clip_i_star_from`) is separate from the embedding so it can
be checked on known vectors.  Images are ``[H, W, 3]`` uint8 RGB arrays.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AnyDressingError
from .regions import Box, crop_square

log = logging.getLogger(__name__)

#: OpenAI CLIP preprocessing constants
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity ``[B, D] x [B, D] -> [B]`` (inputs need not be normalised)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def clip_i_star_from(region_embeds: torch.Tensor, garment_embeds: torch.Tensor,
                     valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP-I* of one image: mean over garments k of ``cos(region_k, garment_k)``; ``[N, D]`` each -> scalar.

    ``valid [N]`` bool leaves out garments whose region could not be found (NaN when none is left).
    """
    sims = cosine(region_embeds, garment_embeds)
    if valid is not None:
        sims = sims[valid]
    return sims.mean() if sims.numel() else torch.tensor(float("nan"))


def _features(out) -> torch.Tensor:
    """transformers 4.x returns the projected embeddings; 5.x a model output whose pooler holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """CLIP embeddings for the metrics.

    Args:
        model: a ``transformers.CLIPModel`` (any size).
        tokenizer: callable ``(list[str], padding=True, truncation=True, return_tensors="pt")`` ->
            ``{"input_ids", "attention_mask"}`` (a ``CLIPTokenizer`` or a test stand-in).
        image_processor: optional ``CLIPImageProcessor``; without it images are resized (shorter
            side, bicubic, antialiased), centre-cropped and normalised in torch [choice: close to,
            not bit-equal with, the PIL path].
    """

    def __init__(self, model, tokenizer: Optional[Callable] = None, image_processor=None, device="cpu",
                 batch_size: int = 16):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.batch_size = batch_size
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_path(cls, path: str, device="cpu", dtype=torch.float32) -> "ClipScorer":
        """Load a transformers CLIP folder (``config.json`` + weights, tokenizer files) from disk."""
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        if not os.path.isdir(path):
            raise AnyDressingError(
                f"CLIP model folder {path!r} does not exist; give a local transformers CLIP folder "
                "(e.g. a saved openai/clip-vit-large-patch14) - nothing is downloaded")
        model = CLIPModel.from_pretrained(path, local_files_only=True).to(dtype)
        tokenizer = processor = None
        if any(os.path.isfile(os.path.join(path, f)) for f in ("vocab.json", "tokenizer.json")):
            tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        else:
            log.warning("no CLIP tokenizer files (vocab.json/tokenizer.json) in %s: CLIP-T is unavailable", path)
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, processor, device)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 ``[H, W, 3]`` images -> pixel values ``[B, 3, s, s]``."""
        if self.image_processor is not None:
            return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        out = []
        s = self.image_size
        for im in images:
            a = np.asarray(im)
            if a.ndim != 3 or a.shape[2] != 3:
                raise AnyDressingError(f"images must be RGB [H, W, 3]; got shape {list(a.shape)}")
            t = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            h, w = t.shape[-2:]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            t = F.interpolate(t, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            y0, x0 = (nh - s) // 2, (nw - s) // 2
            out.append(t[..., y0:y0 + s, x0:x0 + s])
        x = torch.cat(out)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_embeds(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``[B, D]`` projected image embeddings (not normalised)."""
        chunks = []
        for i in range(0, len(images), self.batch_size):
            px = self.preprocess(images[i:i + self.batch_size]).to(self.device, self.model.dtype)
            chunks.append(_features(self.model.get_image_features(pixel_values=px)).float().cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, D]`` projected text embeddings (not normalised)."""
        if self.tokenizer is None:
            raise AnyDressingError("CLIP-T needs the CLIP tokenizer files (vocab.json, merges.txt) in the model folder")
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                             max_length=int(self.model.config.text_config.max_position_embeddings))
        ids = tok["input_ids"].to(self.device)
        mask = tok.get("attention_mask")
        out = self.model.get_text_features(input_ids=ids, attention_mask=None if mask is None else mask.to(self.device))
        return _features(out).float().cpu()

    def clip_t(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> torch.Tensor:
        """CLIP-T per image ``[B]``."""
        if len(images) != len(texts):
            raise AnyDressingError(f"CLIP-T needs one prompt per image; got {len(images)} images, {len(texts)} prompts")
        return cosine(self.image_embeds(images), self.text_embeds(texts))

    def clip_i(self, image: np.ndarray, garments: Sequence[np.ndarray]) -> torch.Tensor:
        """CLIP-I of one image: mean over garments of ``cos(image, garment)`` (scalar)."""
        e = self.image_embeds([image] + list(garments))
        return cosine(e[:1].expand(len(garments), -1), e[1:]).mean()

    def clip_i_star(self, image: np.ndarray, garments: Sequence[np.ndarray], boxes: Sequence[Optional[Box]]) -> torch.Tensor:
        """CLIP-I* of one image; ``boxes[k]`` is garment k's body region (None = not found, left out)."""
        if len(boxes) != len(garments):
            raise AnyDressingError(f"CLIP-I* needs one region per garment; got {len(boxes)} for {len(garments)}")
        valid = [b is not None for b in boxes]
        crops = [crop_square(image, b) for b in boxes if b is not None]
        if not crops:
            return torch.tensor(float("nan"))
        e = self.image_embeds(crops + [g for g, ok in zip(garments, valid) if ok])
        return clip_i_star_from(e[:len(crops)], e[len(crops):])

    def normalized_image_embeds(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return F.normalize(self.image_embeds(images), dim=-1)


def mean_std(values: List[float]) -> dict:
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"), "std": float(v.std()) if v.size else float("nan"),
            "n": int(v.size)}
