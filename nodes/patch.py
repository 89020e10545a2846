"""The attn1 replace that turns DressingNet's self-attention into Dressing-Attention.

One :class:`DressingShared` per Apply node holds the garment features and settings; one
:class:`DressingReplace` per layer calls the core math.  Garment K'/V' are projected ONCE per
sampling run (the main model's projections may be LoRA-patched for this run, HOST.md) or come
precomputed from an adapter; an OUTER_SAMPLE wrapper opens and closes that per-run cache so
nothing outlives the run.

Performance (issue 7, docs/PERFORMANCE.md): per layer call the patch does no device->host sync and
no row copies, and builds no bias or weight tensors (cached per token count for the run): the sigma range
test is decided once per step (the step's ``sigmas`` tensor is shared
by every layer), the CFG rows are contiguous slices (views) computed in Python from
``cond_or_uncond``, garment weights stay a Python list, and K'/V' ``[1, N*L, C]`` are shared by the
batch (expanded, never repeated).
"""

from __future__ import annotations

import logging
import weakref
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
        self.invariants = {}  # dressing_attention's cache of bias rows and weight scales, shared by the layers
        self.step = (None, True)  # (sigmas tensor of the current step, active at that step)
        # the UNet's attn1 modules by key, found once per UNet (walking every module costs ~1 ms per run on
        # a tiny model); weak, so a cached entry never keeps a freed model's modules alive
        self._modules_of = weakref.WeakKeyDictionary()

    def begin(self, diffusion_model):
        if self.depth == 0:
            modules = self._modules_of.get(diffusion_model)
            if modules is None:
                modules = self._modules_of[diffusion_model] = attn1_modules(diffusion_model)
            self.modules = modules
            self.kv, self.regions, self.invariants, self.step = {}, {}, {}, (None, True)
        self.depth += 1

    def end(self):
        self.depth -= 1
        if self.depth <= 0:
            self.depth, self.modules, self.step = 0, None, (None, True)
            self.kv, self.regions, self.invariants = {}, {}, {}


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
        last, on = self.state.step
        if sigmas is last:  # same step, another layer: no second device->host sync
            return on
        sigma = float(sigmas.detach().flatten()[0])
        on = self.sigma_end <= sigma <= self.sigma_start
        if self.state.depth > 0:  # remember only inside a run: the cache dies with it
            self.state.step = (sigmas, on)
        return on

    def segments(self, extra, batch: int) -> tuple:
        """Contiguous row ranges of the batch and whether each is dressed: ``((start, stop, on), ...)``.

        ComfyUI stacks the CFG branches as equal chunks in ``cond_or_uncond`` order (0 = positive).
        Computed in Python, so no index tensor and no device sync per layer.
        """
        cou = extra.get("cond_or_uncond")
        if self.cfg_policy == CFGPolicy.BOTH or not cou:
            return ((0, batch, True),)
        chunk = max(1, batch // len(cou))
        flags = [cou[min(i // chunk, len(cou) - 1)] == 0 for i in range(batch)]
        out, start = [], 0
        for i in range(1, batch + 1):
            if i == batch or flags[i] != flags[start]:
                out.append((start, i, flags[start]))
                start = i
        return tuple(out)

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
        # settings are fixed for the run: bias rows and weight scales are built once per token count and run
        # (layers of one level share them; the cache key holds everything they depend on)
        cache = sh.state.invariants if sh.state.depth > 0 else None

        def attention(q_, k_, v_, h, mask=None):
            if k_.shape[0] != q_.shape[0]:
                # K'/V' are one row shared by the batch; the host's attention reshapes k by q's batch size
                # (a [1, S, C] key read as [B, S/B, ...] would split the garments across rows): expand, a view
                k_, v_ = k_.expand(q_.shape[0], -1, -1), v_.expand(q_.shape[0], -1, -1)
            return optimized_attention(q_, k_, v_, h, mask=mask, attn_precision=precision, transformer_options=extra_options)

        def dressed(rows: slice):
            qq, kk, vv = q[rows], k[rows], v[rows]
            if sh.form == DAForm.JOINT and self.previous is not None:
                # another pack owns this attention: hand it the concatenated tokens (weights not applicable)
                b = qq.shape[0]
                return self.previous(qq, torch.cat([kk, gk.expand(b, -1, -1)], 1),
                                     torch.cat([vv, gv.expand(b, -1, -1)], 1), extra_options)
            out = dressing_attention(
                qq, kk, vv, gk, gv, heads, lengths, strength=sh.strength, form=sh.form,
                weights=sh.features.weights, regions=regions, return_maps=store is not None,
                attention=attention, self_attention=lambda a, b_, c, h, mask=None: self._plain(a, b_, c, extra_options),
                cache=cache, token_size=sh.features.token_size(self.key),
            )
            if store is not None:
                out, maps = out
                store.maps[self.key] = maps.detach().cpu()
                store.latent_hw = tuple(extra_options["original_shape"][2:])
            return out

        sh.calls += 1
        segments = sh.segments(extra_options, q.shape[0])
        if len(segments) == 1:
            return dressed(slice(None)) if segments[0][2] else self._plain(q, k, v, extra_options)
        # CFG with garments in the positive branch only: slices are views, one cat assembles the batch
        parts = [dressed(slice(a, b)) if on else self._plain(q[a:b], k[a:b], v[a:b], extra_options)
                 for a, b, on in segments]
        return torch.cat(parts, dim=0)


def find_shared(model) -> Optional[DressingShared]:
    """The last AnyDressing applied to ``model`` (None if there is none)."""
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for fn in reversed(list(replaces.values())):
        while fn is not None:
            if isinstance(fn, DressingReplace):
                return fn.shared
            fn = getattr(fn, "previous", None)
    return None
