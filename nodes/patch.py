"""The attn1 replace that turns DressingNet's self-attention into Dressing-Attention.

One :class:`DressingPatch` per Apply node holds the garment features and settings; one
:class:`DressingReplace` per layer calls the core math.  Garment K'/V' are projected ONCE per sampling run
(the main model's projections may be patched for this run, e.g. by a LoRA), and an OUTER_SAMPLE wrapper
opens and closes that per-run cache so nothing outlives the run.  The garment tokens themselves live in a
:class:`GarmentStore` that ComfyUI's model management loads with the UNet and offloads with it.

Per layer call the patch does no device->host sync and no row copies, and builds no bias or weight tensors
more than once per run: docs/PERFORMANCE.md has the measurements behind each of these.
"""

from __future__ import annotations

import logging
import weakref
from typing import Optional, Sequence

import torch

from ..anydressing_core.attention import DAForm, dressing_attention, masks_to_tokens, split_rows, tokens_hw
from ..anydressing_core.features import BlockKey, GarmentFeatures, key_to_str, project_garments
from . import regions as region_hooks
from .common import CFGPolicy, attn1_modules
from .host_api import model_management, model_patcher, optimized_attention

log = logging.getLogger(__name__)


class MapStore:
    """Receives per-layer garment maps ``[B, T, N]`` when placed in transformer_options."""

    OPTION = "anydressing_maps"

    def __init__(self):
        self.maps = {}
        self.latent_hw = None

    def __deepcopy__(self, memo):
        return self


def _param_name(key: BlockKey) -> str:
    return key_to_str(key).replace(".", "_")


class GarmentStore(torch.nn.Module):
    """The garment tokens ``F_all [1, N*L, C]`` per layer (and an adapter's Wk', Wv'), as a module that
    ComfyUI's model management can load, offload and count (``--lowvram``, ``--novram``, freeing memory).

    The tensors are the features' own (no copy on the device they were encoded to).
    """

    def __init__(self, features: GarmentFeatures):
        super().__init__()
        self.flat = torch.nn.ParameterDict({
            _param_name(key): torch.nn.Parameter(features.flat(key), requires_grad=False) for key in features.tokens})
        self.projections = features.projections  # a DAProjections module or None

    def tokens(self, key: BlockKey) -> torch.Tensor:
        return self.flat[_param_name(key)]

    def __deepcopy__(self, memo):
        return self


def managed_store(features: GarmentFeatures, model):
    """A :class:`GarmentStore` of ``features`` wrapped for ComfyUI's model management on ``model``'s devices."""
    return model_patcher.ModelPatcher(GarmentStore(features), model.load_device, model.offload_device)


class RunState:
    """What exists only during one sampling run: modules of the loaded UNet and the K'/V' cache."""

    def __init__(self):
        self.depth = 0
        self.modules = None
        self.kv = {}
        self.regions = {}
        self.settings_tensors = {}  # dressing_attention's cache of bias rows and weight scales, shared by layers
        self.step = (None, True)  # (sigmas tensor of the current step, active at that step)
        self.auto_regions = None  # the run's automatic regions (nodes/regions.py RegionRun), if any
        # the UNet's attn1 modules by key, found once per UNet (walking every module costs ~1 ms per run on
        # a tiny model); weak, so a cached entry never keeps a freed model's modules alive
        self._modules_of = weakref.WeakKeyDictionary()

    def begin(self, diffusion_model):
        if self.depth == 0:
            modules = self._modules_of.get(diffusion_model)
            if modules is None:
                modules = self._modules_of[diffusion_model] = attn1_modules(diffusion_model)
            self.modules = modules
            self.kv, self.regions, self.settings_tensors, self.step = {}, {}, {}, (None, True)
        self.depth += 1

    def end(self):
        self.depth -= 1
        if self.depth <= 0:
            self.depth, self.modules, self.step = 0, None, (None, True)
            self.kv, self.regions, self.settings_tensors = {}, {}, {}


def cfg_flags(cond_or_uncond: Optional[Sequence[int]], batch: int, policy: str) -> list:
    """Which batch rows get garments: ComfyUI stacks the CFG branches as equal chunks in ``cond_or_uncond``
    order (0 = positive); the paper's policy dresses the positive rows only.  Plain Python: no device sync."""
    if policy == CFGPolicy.BOTH or not cond_or_uncond:
        return [True] * batch
    chunk = max(1, batch // len(cond_or_uncond))
    return [cond_or_uncond[min(i // chunk, len(cond_or_uncond) - 1)] == 0 for i in range(batch)]


class DressingPatch:
    """Settings, garment store and per-run state of one AnyDressing Apply, shared by all its layer replaces."""

    def __init__(self, features: GarmentFeatures, store, strength: float, sigma_start: float, sigma_end: float,
                 form: str, cfg_policy: str, regions: Optional[torch.Tensor] = None, region_spec=None):
        self.features = features
        self.store = store  # ModelPatcher of a GarmentStore
        self.strength = float(strength)
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self.form = form
        self.cfg_policy = cfg_policy
        self.regions = regions  # [N, H, W] in image space, or None
        self.region_spec = region_spec  # automatic regions (anydressing_core.regions.RegionSpec), or None
        self.last_regions = None  # [N, H, W] the automatic regions of the last run, for the maps picture
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
        outermost = self.state.depth == 1
        try:
            if outermost:
                region_hooks.begin_run(self, args, guider.model_patcher.model.diffusion_model,
                                       guider.model_patcher.load_device)
            return executor(*args, **kwargs)
        finally:
            if outermost:
                region_hooks.end_run(self)
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
            if self.state.auto_regions is not None:  # automatic regions: close the last step's vote, once per step
                self.state.auto_regions.plan.begin_step()
        return on

    def garment_kv(self, key: BlockKey, like: torch.Tensor):
        """K', V' of one layer, ``[1, N*L, C]`` each, computed once per run."""
        cached = self.state.kv.get(key)
        if cached is not None:
            return cached
        garments = self.store.model
        flat = garments.tokens(key).to(device=like.device, dtype=like.dtype)
        module = self.state.modules[key]
        with torch.no_grad():
            pair = project_garments(flat, key, garments.projections, module.to_k, module.to_v)
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

    def __init__(self, patch: DressingPatch, key: BlockKey, previous=None):
        self.patch = patch
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
        patch = self.patch
        if not patch.active(extra_options):
            return self._plain(q, k, v, extra_options)
        if patch.state.modules is None:
            # Called outside a sampling run (no OUTER_SAMPLE wrapper): no per-run projections to use.
            log.warning("AnyDressing: model called outside sampling; garments are not applied")
            return self._plain(q, k, v, extra_options)
        model_management.throw_exception_if_processing_interrupted()
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        gk, gv = patch.garment_kv(self.key, q)
        regions = patch.region_tokens(extra_options, q.shape[1], q)
        store = extra_options.get(MapStore.OPTION)
        lengths = patch.features.lengths(self.key)
        # settings are fixed for the run: bias rows and weight scales are built once per token count and run
        cache = patch.state.settings_tensors if patch.state.depth > 0 else None

        def attention(q_, k_, v_, h, mask=None):
            if k_.shape[0] != q_.shape[0]:
                # K'/V' are one row shared by the batch; the host's attention reshapes k by q's batch size
                # (a [1, S, C] key read as [B, S/B, ...] would split the garments across rows): expand, a view
                k_, v_ = k_.expand(q_.shape[0], -1, -1), v_.expand(q_.shape[0], -1, -1)
            return optimized_attention(q_, k_, v_, h, mask=mask, attn_precision=precision, transformer_options=extra_options)

        def dressed(rows: slice):
            qq, kk, vv = q[rows], k[rows], v[rows]
            regs, calls_cache = regions, cache
            run = patch.state.auto_regions
            if run is not None:  # automatic regions, per layer size and step (nodes/regions.py)
                regs = region_hooks.layer_regions(run, extra_options, qq, gk, heads, lengths, qq.shape[0] == q.shape[0])
                calls_cache = run.plan.step_cache if run.plan.dynamic else cache
            if patch.form == DAForm.JOINT and self.previous is not None:
                # another pack owns this attention: hand it the concatenated tokens (weights not applicable)
                batch = qq.shape[0]
                return self.previous(qq, torch.cat([kk, gk.expand(batch, -1, -1)], 1),
                                     torch.cat([vv, gv.expand(batch, -1, -1)], 1), extra_options)
            out = dressing_attention(
                qq, kk, vv, gk, gv, heads, lengths, strength=patch.strength, form=patch.form,
                weights=patch.features.weights, regions=regs, return_maps=store is not None,
                attention=attention, self_attention=lambda a, b, c, h, mask=None: self._plain(a, b, c, extra_options),
                cache=calls_cache, token_size=patch.features.token_size(self.key),
            )
            if store is not None:
                out, maps = out
                store.maps[self.key] = maps.detach().cpu()
                store.latent_hw = tuple(extra_options["original_shape"][2:])
            return out

        def plain(rows: slice):
            return self._plain(q[rows], k[rows], v[rows], extra_options)

        patch.calls += 1
        flags = cfg_flags(extra_options.get("cond_or_uncond"), q.shape[0], patch.cfg_policy)
        return split_rows(flags, dressed, plain)


def find_patch(model) -> Optional[DressingPatch]:
    """The last AnyDressing applied to ``model`` (None if there is none)."""
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for fn in reversed(list(replaces.values())):
        while fn is not None:
            if isinstance(fn, DressingReplace):
                return fn.patch
            fn = getattr(fn, "previous", None)
    return None
