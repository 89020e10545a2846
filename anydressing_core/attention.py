"""Dressing-Attention (DA) on already-projected q/k/v.

All tensors use the host's layout ``[B, tokens, heads * dim_head]``.  The same function
serves the ComfyUI attn1 replace (``nodes/patch.py``), the diffusers attention processors
and the trainer, so the three compute one model.

Two forms are implemented:

* ``separate`` [paper, Eq. 6]::

      Z = softmax(Q K^T / sqrt(d)) V + lambda * softmax(Q K'^T / sqrt(d)) V'

  with one softmax over the concatenated tokens of all N garments.
* ``joint`` [choice, what reference-style weights such as MagicClothing were trained with]::

      Z = softmax(Q [K, K']^T / sqrt(d) + b) [V, V']

  where ``b`` is ``log(lambda * w_k)`` on garment k's tokens (0 on the image's own tokens),
  so lambda = 1 and w = 1 give the plain joint softmax.

Per-garment weights ``w_k`` scale garment k's values in the separate form (the output is
linear in V') and bias its logits in the joint form.  Pooled garment tokens (each the mean of
``s`` encoded tokens, :mod:`.budget`) add ``log s`` to their joint-form logits [choice, the
proportional attention of token merging, Bolya et al. 2023], so a garment keeps its share of the
softmax against the image's own tokens; in the separate form the offset is common to every garment
token and cancels.  Optional per-garment regions
(a training-free localization [choice]) restrict each pixel row to the garments whose
region contains it; rows in no region see every garment.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

#: ``fn(q, k, v, heads, mask=None) -> [B, T, heads*dim]``; ``mask`` is additive, broadcastable
#: to ``[B, heads, T, S]`` (a 2-D ``[T, S]`` or 3-D ``[B, T, S]`` mask is accepted).
AttentionFn = Callable[..., torch.Tensor]


class DAForm:
    """How garment tokens enter self-attention.

    ``ALL`` are the forms the math implements; ``CHOICES`` adds ``auto`` for a user's setting: the form the
    weights were trained with, joint in zero-shot.
    """

    SEPARATE = "separate"
    JOINT = "joint"
    AUTO = "auto"
    ALL = (SEPARATE, JOINT)
    CHOICES = (AUTO, SEPARATE, JOINT)


def _heads_view(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _mask_4d(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return mask


def sdpa_attention(q, k, v, heads: int, mask: Optional[torch.Tensor] = None, **_ignored) -> torch.Tensor:
    """Default attention: PyTorch SDPA with the host's calling convention."""
    b, t, c = q.shape
    if k.shape[0] != b:
        k = k.expand(b, -1, -1)
        v = v.expand(b, -1, -1)
    out = F.scaled_dot_product_attention(
        _heads_view(q, heads), _heads_view(k, heads), _heads_view(v, heads), attn_mask=_mask_4d(mask)
    )
    return out.transpose(1, 2).reshape(b, t, c)


def _as_weights(weights, n: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != n:
        raise ValueError(f"got {w.numel()} garment weights for {n} garments; give one weight per garment")
    return w


def _token_index(lengths: Sequence[int], device) -> torch.Tensor:
    """Garment index of every garment token: ``[S]``."""
    return torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.as_tensor(list(lengths), device=device)
    )


def _per_token(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Per-garment ``values [N]`` spread onto the garment tokens: ``[S]``.

    [choice, speed] Equal lengths (every garment encoded at one size, the usual case) need no
    index tensor, so nothing is copied to the device on every call.
    """
    if len(set(lengths)) == 1:
        return values.repeat_interleave(int(lengths[0]))
    return values[_token_index(lengths, values.device)]


def _host_weights(weights, n: int, dtype) -> torch.Tensor:
    """The weights on the CPU in ``dtype``: decisions about them must not wait for the device."""
    if weights is None:
        return torch.ones(n, dtype=dtype)
    if torch.is_tensor(weights):
        return weights.detach().flatten().to("cpu", dtype)
    return torch.as_tensor(weights, dtype=dtype).flatten()


def region_bias(regions: torch.Tensor, lengths: Sequence[int], dtype) -> torch.Tensor:
    """Additive bias ``[Br, T, S]`` from per-garment regions ``[Br, T, N]``.

    A row whose regions contain garment k may see k's tokens; a row in no region sees all.
    """
    allowed = regions > 0.5
    nowhere = ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed | nowhere
    allowed_tokens = allowed[..., _token_index(lengths, regions.device)]
    bias = torch.zeros(allowed_tokens.shape, dtype=dtype, device=regions.device)
    return bias.masked_fill_(~allowed_tokens, float("-inf"))


def garment_maps(q, gk, heads: int, lengths: Sequence[int], bias: Optional[torch.Tensor] = None,
                 self_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-garment attention maps ``A_k`` [paper, Eq. 7]: ``[B, T, N]``, mean over heads.

    ``P = softmax(Q K'^T / sqrt(d))`` summed over garment k's tokens.  With ``self_k`` (joint
    form) the softmax also runs over the image's own tokens, so the maps sum to at most 1.
    ``bias`` is added to the garment logits (``[T, S]`` or ``[B, T, S]``).
    """
    b = q.shape[0]
    qh = _heads_view(q, heads)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    gk = gk.expand(b, -1, -1) if gk.shape[0] != b else gk
    logits = (qh @ _heads_view(gk, heads).transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + _mask_4d(bias).to(logits.dtype)
    if self_k is not None:
        own = (qh @ _heads_view(self_k, heads).transpose(-1, -2)) * scale
        probs = torch.cat([own, logits], dim=-1).float().softmax(dim=-1)[..., own.shape[-1]:]
    else:
        probs = logits.float().softmax(dim=-1)
    probs = probs.mean(dim=1)  # heads
    n = len(lengths)
    idx = _token_index(lengths, q.device)
    maps = torch.zeros(b, probs.shape[1], n, dtype=probs.dtype, device=q.device)
    return maps.index_add_(2, idx, probs)


def dressing_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    gv: torch.Tensor,
    heads: int,
    lengths: Sequence[int],
    *,
    strength: float = 1.0,
    form: str = DAForm.SEPARATE,
    weights: Union[Sequence[float], torch.Tensor, None] = None,
    regions: Optional[torch.Tensor] = None,
    return_maps: bool = False,
    attention: AttentionFn = sdpa_attention,
    self_attention: Optional[AttentionFn] = None,
    cache: Optional[dict] = None,
    token_size: float = 1.0,
):
    """Dressing-Attention for one layer.

    Args:
        q, k, v: the image's projected tokens, ``[B, T, C]``.
        gk, gv: garment keys/values K', V' of all garments concatenated on the token axis,
            ``[Bg, S, C]`` with ``Bg`` 1 (shared by the batch, no copy) or B.
        heads: number of heads; ``C`` must be divisible by it.
        lengths: tokens per garment, ``sum(lengths) == S`` (N = ``len(lengths)``).
        strength: lambda (0.7 at inference [paper]).
        form: :class:`DAForm`.
        weights: per-garment weights ``w_k >= 0`` (default 1).
        regions: optional ``[Br, T, N]`` 0/1 masks, ``Br`` in (1, B).
        return_maps: also return ``A_k`` as ``[B, T, N]`` (float32).
        attention: attention function for the garment/joint attention.
        self_attention: attention function for the plain self-attention term of the separate
            form (default ``attention``); lets a host chain another pack's replacement here.
        cache: optional dict owned by the caller, for as long as ``lengths``, ``weights`` and
            ``regions`` stay the same (e.g. one sampling run): the tensors derived from the settings
            (weight scales, bias rows) are built once per token count and reused.

        token_size: how many encoded tokens each garment token stands for (``p * p`` after a
            ``p x p`` pooling; 1 = not pooled); the joint form adds ``log(token_size)`` to the
            garment logits.

    Returns:
        ``out [B, T, C]`` or ``(out, maps)``.
    """
    if form not in DAForm.ALL:
        raise ValueError(f"unknown Dressing-Attention form {form!r}; use one of {DAForm.ALL}")
    if q.shape[-1] % heads:
        raise ValueError(f"channels {q.shape[-1]} are not divisible by {heads} heads")
    if gk.shape != gv.shape or gk.shape[-1] != k.shape[-1]:
        raise ValueError(f"garment K'/V' shapes {tuple(gk.shape)}/{tuple(gv.shape)} do not fit keys {tuple(k.shape)}")
    if sum(lengths) != gk.shape[1]:
        raise ValueError(f"garment lengths {list(lengths)} sum to {sum(lengths)}, but K' has {gk.shape[1]} tokens")
    b = q.shape[0]
    # [choice, speed] the weights, biases and flags below depend only on the layer's token count and the
    # settings, not on q/k/v: a caller that keeps those fixed (one sampling run) passes a ``cache`` dict and
    # they are built once per token count instead of ~12 small tensor ops on every call.
    cache_key = (form, k.shape[1], tuple(lengths), q.dtype, q.device, float(strength), id(regions), float(token_size))
    fixed = cache.get(cache_key) if cache is not None else None
    if fixed is None:
        fixed = _settings_tensors(form, k.shape[1], lengths, strength, weights, regions, q, token_size)
        if cache is not None:
            cache[cache_key] = fixed

    if form == DAForm.SEPARATE:
        own = (self_attention or attention)(q, k, v, heads)
        gv_w = gv if fixed["value_scale"] is None else gv * fixed["value_scale"]
        garment = attention(q, gk, gv_w, heads, mask=fixed["bias"])
        out = own + strength * garment
        if return_maps:
            return out, garment_maps(q, gk, heads, lengths, fixed["bias"])
        return out

    gk_b = gk.expand(b, -1, -1) if gk.shape[0] != b else gk
    gv_b = gv.expand(b, -1, -1) if gv.shape[0] != b else gv
    out = attention(q, torch.cat([k, gk_b], dim=1), torch.cat([v, gv_b], dim=1), heads, mask=fixed["full_bias"])
    if return_maps:
        return out, garment_maps(q, gk, heads, lengths, fixed["garment_bias"], self_k=k)
    return out


def _settings_tensors(form: str, own_tokens: int, lengths: Sequence[int], strength: float, weights, regions,
                      q: torch.Tensor, token_size: float = 1.0) -> dict:
    """What :func:`dressing_attention` derives from the settings alone (no q/k/v values).

    separate: ``value_scale`` (per-token garment weights ``[1, S, 1]``, None when all are 1) and the
    region ``bias``. joint: ``full_bias`` over ``[own tokens, garment tokens]`` (None when no bias is
    needed) and ``garment_bias`` for the maps.
    """
    n = len(lengths)
    w = _as_weights(weights, n, q)
    w_host = _host_weights(weights, n, q.dtype)
    bias = region_bias(regions, lengths, q.dtype) if regions is not None else None
    if form == DAForm.SEPARATE:
        scale = None if bool((w_host == 1).all()) else _per_token(w, lengths).view(1, -1, 1)
        return {"value_scale": scale, "bias": bias}

    # joint: one softmax over [own tokens, garment tokens], garment logits biased by log(lambda * w)
    # [choice, speed] the log-weight bias is one row [1, S] broadcast over the image tokens, never a
    # materialised [T, T+S] matrix (hosts expand a full mask per head: O(T*(T+S)) memory per call)
    garment_bias = _per_token(torch.log((strength * token_size * w).clamp_min(0)), lengths).view(1, -1)
    if bias is not None:
        garment_bias = garment_bias + bias
    need_bias = bias is not None or bool((strength * token_size * w_host != 1).any())
    full_bias = None
    if need_bias:
        own_zero = torch.zeros(*garment_bias.shape[:-1], own_tokens, dtype=q.dtype, device=q.device)
        if garment_bias.ndim == 3 and own_zero.ndim == 2:
            own_zero = own_zero.expand(garment_bias.shape[0], -1, -1)
        full_bias = torch.cat([own_zero, garment_bias.to(q.dtype)], dim=-1)
    return {"full_bias": full_bias, "garment_bias": garment_bias if need_bias else None}


def row_segments(flags: Sequence[bool]) -> Tuple[Tuple[int, int, bool], ...]:
    """Contiguous runs of equal flags: ``((start, stop, flag), ...)`` covering every row in order."""
    flags = [bool(f) for f in flags]
    out, start = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            out.append((start, i, flags[start]))
            start = i
    return tuple(out)


def split_rows(flags: Sequence[bool], dressed: Callable[[slice], torch.Tensor],
               plain: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``dressed(rows)`` for the batch rows whose flag is True, ``plain(rows)`` for the others, in row order.

    Both take a ``slice`` of contiguous rows (a view, no copy) and return ``[rows, T, C]``; one call per
    run of equal flags.  Used for classifier-free guidance: the paper drops garments in the unconditional
    branch, so those rows run the plain self-attention.
    """
    segments = row_segments(flags)
    if len(segments) == 1:
        return (dressed if segments[0][2] else plain)(slice(None))
    return torch.cat([(dressed if on else plain)(slice(a, b)) for a, b, on in segments], dim=0)


def tokens_hw(latent_hw: Sequence[int], tokens: int) -> tuple[int, int]:
    """Height and width of a layer with ``tokens`` tokens for a latent of ``latent_hw``.

    UNets downsample by 2 with ceil rounding; find the factor that gives ``tokens``.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    for _ in range(8):
        if h * w == tokens:
            return h, w
        h, w = (h + 1) // 2, (w + 1) // 2
    raise ValueError(f"cannot map {tokens} tokens onto a latent of {latent_hw}")


def masks_to_tokens(masks: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Resize image-space masks ``[N, H, W]`` (or ``[B, N, H, W]``) to tokens ``[1 or B, h*w, N]``."""
    squeeze = masks.ndim == 3
    m = masks.unsqueeze(0) if squeeze else masks
    m = F.interpolate(m.float(), size=tuple(int(x) for x in hw), mode="area")
    m = m.flatten(2).transpose(1, 2)
    return m
