"""Prompt regions: where the cross-attention reads each garment's words.

The words of a garment are one or more phrases (``"jeans, trousers"``); by default its slot's usual
nouns (:data:`SLOT_WORDS`). Their token positions in the positive prompt come from the text encoder's
own tokenizer (the caller passes token ids, so this module needs no tokenizer); the map of garment k
at a layer is the cross-attention probability on its tokens, mean over heads (:func:`word_maps`).
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Sequence

import torch

#: [choice] the nouns a prompt most often uses for a garment of each slot
SLOT_WORDS: Dict[str, tuple] = {
    "upper": ("shirt", "t-shirt", "top", "blouse", "sweater", "jumper", "hoodie", "jacket", "coat", "tank top", "vest"),
    "lower": ("trousers", "pants", "jeans", "shorts", "skirt", "leggings"),
    "hat": ("hat", "cap", "beanie", "beret"),
    "dress": ("dress", "gown", "robe"),
    "shoes": ("shoes", "sneakers", "boots", "heels", "sandals", "trainers"),
    "bag": ("bag", "handbag", "purse", "backpack"),
    "other": (),
}


def parse_region_words(text: str, slots: Sequence[str]) -> List[List[str]]:
    """Phrases per garment from ``text``: one entry per garment in chain order, separated by ``;`` or new
    lines, alternatives by commas. An empty or missing entry means the slot's nouns."""
    entries = [e.strip() for e in re.split(r"[;\n]", text or "")] if (text or "").strip() else []
    if len(entries) > len(slots):
        raise ValueError(f"region words give {len(entries)} entries for {len(slots)} garments; give at most one "
                         "entry per garment (chain order), separated by ';'")
    out = []
    for i, slot in enumerate(slots):
        entry = entries[i] if i < len(entries) else ""
        phrases = [p.strip() for p in entry.split(",") if p.strip()] if entry else list(SLOT_WORDS.get(slot, ()))
        out.append(phrases)
    return out


def phrase_positions(prompt: Sequence[Sequence[int]], phrase: Sequence[int]) -> List[int]:
    """Positions of every occurrence of ``phrase`` (token ids) in a prompt given as chunks of token ids.

    Positions count on the concatenated chunks, as the context tensor of the cross-attention holds them
    (chunk c, index i -> ``c * len(chunk) + i``).
    """
    found: List[int] = []
    phrase = list(phrase)
    if not phrase:
        return found
    offset = 0
    for chunk in prompt:
        ids = list(chunk)
        for i in range(len(ids) - len(phrase) + 1):
            if ids[i:i + len(phrase)] == phrase:
                found.extend(offset + i + j for j in range(len(phrase)))
        offset += len(ids)
    return sorted(set(found))


def position_matrix(positions: Sequence[Sequence[int]], tokens: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[tokens, N]`` with 1 where context token t belongs to garment k's words (positions past ``tokens``
    are dropped: a context shorter than the prompt)."""
    mat = torch.zeros(tokens, len(positions), dtype=dtype)
    for k, pos in enumerate(positions):
        idx = [p for p in pos if p < tokens]
        if idx:
            mat[idx, k] = 1.0
    return mat.to(device)


def word_maps(q: torch.Tensor, k: torch.Tensor, heads: int, select: torch.Tensor) -> torch.Tensor:
    """Cross-attention mass on each garment's words: ``[B, T, N]``.

    ``q [B, T, C]`` (image queries), ``k [B, S, C]`` (the context's keys), ``select [S, N]`` from
    :func:`position_matrix`. ``softmax(q k^T / sqrt(d))`` over the S context tokens, mean over heads.
    """
    b, t, c = q.shape
    d = c // heads
    qh = q.reshape(b, t, heads, d).transpose(1, 2)
    kh = k.reshape(k.shape[0], k.shape[1], heads, d).transpose(1, 2)
    if kh.shape[0] != b:
        kh = kh.expand(b, -1, -1, -1)
    probs = ((qh @ kh.transpose(-1, -2)) * (1.0 / math.sqrt(d))).float().softmax(dim=-1).mean(dim=1)
    return probs @ select.to(device=probs.device, dtype=probs.dtype)
