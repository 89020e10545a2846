"""The attn1 replace that turns DressingNet's self-attention into Dressing-Attention.

One :class:`DressingShared` per Apply node holds the garment features and settings; one
:class:`DressingReplace` per layer calls the core math.  Garment K'/V' are projected ONCE per
sampling run (the main model's projections may be LoRA-patched for this run, HOST.md) or come
precomputed from an adapter; an OUTER_SAMPLE wrapper opens and closes that per-run cache so
nothing outlives the run.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

import comfy.model_management
from comfy.ldm.modules.attention import optimized_attention

from ..anydressing_core.attention import DAForm, dressing_attention, masks_to_tokens, tokens_hw
from ..anydressing_core.features import BlockKey, GarmentFeatures
from .common import CFGPolicy, attn1_modules

log = logging.getLogger(__name__)


class MapStore:
    """Receives per-layer garment maps ``[B, T, N]`` when placed in transformer_options."""

    OPTION = "anydressing_maps"

    def __init__(self):
        self.maps = {}
        self.latent_hw = None

    def __deepcopy__(self, memo):
        return self


class RunState:
    """What exists only during one sampling run: modules of the loaded UNet and the K'/V' cache."""

    def __init__(self):
        self.depth = 0
        self.modules = None
        self.kv = {}
        self.regions = {}

    def begin(self, diffusion_model):
        if self.depth == 0:
            self.modules = attn1_modules(diffusion_model)
            self.kv, self.regions = {}, {}
        self.depth += 1

    def end(self):
        self.depth -= 1
        if self.depth <= 0:
            self.depth, self.modules, self.kv, self.regions = 0, None, {}, {}


class DressingShared:
    """Settings and features of one Apply AnyDressing, shared by all its layer replaces."""

    def __init__(self, features: GarmentFeatures, strength: float, sigma_start: float, sigma_end: float,
                 form: str, cfg_policy: str, regions: Optional[torch.Tensor] = None):
        self.features = features
        self.strength = float(strength)
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self.form = form
        self.cfg_policy = cfg_policy
        self.regions = regions  # [N, H, W] in image space, or None
        self.state = RunState()
        self.calls = 0  # DA evaluations, for tests and benchmarks

    def __deepcopy__(self, memo):
        # ComfyUI deep-copies model_options on every clone: share, never copy, the features.
        return self

    def to(self, *args, **kwargs):
        return self

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        guider = executor.class_obj
        self.state.begin(guider.model_patcher.model.diffusion_model)
        try:
            return executor(*args, **kwargs)
        finally:
            self.state.end()

    def active(self, extra) -> bool:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.detach().flatten()[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def rows(self, extra, batch: int, device) -> torch.Tensor:
        cou = extra.get("cond_or_uncond")
        if self.cfg_policy == CFGPolicy.BOTH or not cou:
            return torch.ones(batch, dtype=torch.bool, device=device)
        chunk = max(1, batch // len(cou))
        flags = [cou[min(i // chunk, len(cou) - 1)] == 0 for i in range(batch)]
        return torch.tensor(flags, dtype=torch.bool, device=device)

    def garment_kv(self, key: BlockKey, like: torch.Tensor):
        """K', V' of one layer, ``[1, N*L, C]`` each, computed once per run."""
        cached = self.state.kv.get(key)
        if cached is not None:
            return cached
        if self.features.kv is not None and key in self.features.kv:
            gk, gv = self.features.kv[key]
            pair = (gk.to(device=like.device, dtype=like.dtype), gv.to(device=like.device, dtype=like.dtype))
        else:
            module = self.state.modules[key]
            f = self.features.flat(key).to(device=like.device, dtype=like.dtype)
            with torch.no_grad():  # zero-shot: K' = F Wk, V' = F Wv with the run's (maybe LoRA-patched) weights
                pair = (module.to_k(f), module.to_v(f))
        self.state.kv[key] = pair
        return pair

    def region_tokens(self, extra, tokens: int, like: torch.Tensor):
        if self.regions is None:
            return None
        shape = extra.get("original_shape")
        hw = tokens_hw(shape[2:], tokens)
        cached = self.state.regions.get(hw)
        if cached is None:
            cached = masks_to_tokens(self.regions.to(like.device), hw).to(like.dtype)
            self.state.regions[hw] = cached
        return cached


class DressingReplace:
    """attn1 replace for one layer; chains to a replace that another pack registered before."""

    def __init__(self, shared: DressingShared, key: BlockKey, previous=None):
        self.shared = shared
        self.key = key
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def to(self, *args, **kwargs):
        return self

    def _plain(self, q, k, v, extra):
        if self.previous is not None:
            return self.previous(q, k, v, extra)
        return optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                   transformer_options=extra)

    def __call__(self, q, k, v, extra_options):
        sh = self.shared
        if not sh.active(extra_options):
            return self._plain(q, k, v, extra_options)
        if sh.state.modules is None and not (sh.features.kv and self.key in sh.features.kv):
            # Called outside a sampling run (no OUTER_SAMPLE wrapper): no projections to use.
            log.warning("AnyDressing: model called outside sampling; garments are not applied")
            return self._plain(q, k, v, extra_options)
        comfy.model_management.throw_exception_if_processing_interrupted()
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        gk, gv = sh.garment_kv(self.key, q)
        regions = sh.region_tokens(extra_options, q.shape[1], q)
        store = extra_options.get(MapStore.OPTION)
        lengths = sh.features.lengths(self.key)

        def attention(q_, k_, v_, h, mask=None):
            return optimized_attention(q_, k_, v_, h, mask=mask, attn_precision=precision, transformer_options=extra_options)

        def dressed(idx):
            kk, vv = k[idx], v[idx]
            if sh.form == DAForm.JOINT and self.previous is not None:
                # another pack owns this attention: hand it the concatenated tokens (weights not applicable)
                b = idx.numel()
                return self.previous(q[idx], torch.cat([kk, gk.expand(b, -1, -1)], 1),
                                     torch.cat([vv, gv.expand(b, -1, -1)], 1), extra_options)
            out = dressing_attention(
                q[idx], kk, vv, gk, gv, heads, lengths, strength=sh.strength, form=sh.form,
                weights=sh.features.weights, regions=regions, return_maps=store is not None,
                attention=attention, self_attention=lambda a, b_, c, h, mask=None: self._plain(a, b_, c, extra_options),
            )
            if store is not None:
                out, maps = out
                store.maps[self.key] = maps.detach().cpu()
                store.latent_hw = tuple(extra_options["original_shape"][2:])
            return out

        sh.calls += 1
        rows = sh.rows(extra_options, q.shape[0], q.device)
        idx_on = torch.nonzero(rows).flatten()
        if idx_on.numel() == q.shape[0]:
            return dressed(idx_on)
        if idx_on.numel() == 0:
            return self._plain(q, k, v, extra_options)
        idx_off = torch.nonzero(~rows).flatten()
        out = torch.empty_like(q)
        out[idx_on] = dressed(idx_on)
        out[idx_off] = self._plain(q[idx_off], k[idx_off], v[idx_off], extra_options)
        return out


def find_shared(model) -> Optional[DressingShared]:
    """The last AnyDressing applied to ``model`` (None if there is none)."""
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for fn in reversed(list(replaces.values())):
        while fn is not None:
            if isinstance(fn, DressingReplace):
                return fn.shared
            fn = getattr(fn, "previous", None)
    return None
