"""AnyDressing on diffusers ``UNet2DConditionModel``: GarmentsNet and DressingNet processors.

Public API (the trainer and :mod:`.pipeline` build on it)::

    gnet = build_garments_net(unet_copy, slots=["upper", "lower"], rank=64, alpha=8.0,
                              context="none")            # GFE LoRA installed, attn2 removed [paper]
    feats = gnet.encode(garment_latents, ["upper", "lower"])   # GarmentFeatures, F per layer,
                                                               # with grad if grad is enabled
    da = install_dressing_attention(base_unet, projections="copy", trainable=True,
                                    form="separate")      # DA on every attn1 of DressingNet
    with da.use(feats, strength=1.0, garment_rows=rows, region_masks=None, record_maps=True):
        eps = base_unet(z_t, t, encoder_hidden_states=text).sample
    maps = da.maps            # {key: A_k [B_on, T, N] float32}, for the IGL loss [paper, Eq. 7]
    params = list(gnet.parameters()) + list(da.projections.parameters())
    checkpoint.export(gnet, da, default_lambda=0.7, provenance={...}).save("out.safetensors")
    da.remove()               # restore the UNet's previous processors

* ``gnet.unet`` is the GarmentsNet UNet (fully trainable [paper]); ``gnet.gfe`` the
  :class:`~.gfe.GFELoRA` (or None: zero-shot / imported weights without GFE).
* ``context``: ``"none"`` = attn2 removed (its processor returns exact zeros, so the
  residual is untouched) [paper]; ``"empty_prompt"`` / ``"image_tokens"`` keep attn2 and use
  the ``encoder_hidden_states`` given to :meth:`GarmentsNet.encode` (MagicClothing,
  IMAGDressing).
* ``da.use(...)`` sets everything per call: ``features``,
  ``strength`` (lambda), ``weights`` (per garment), ``form``, ``region_masks`` ``[N, H, W]``
  with ``latent_hw``, ``garment_rows`` ``[B]`` bool (CFG: rows without garments run plain
  self-attention [paper: garments dropped in the unconditional branch]), ``record_maps``.
* K', V' are computed once per ``use`` context by :func:`.features.garment_kv` (the same function the
  ComfyUI patch calls): from the features' adapter projections, else the installed trainable
  :class:`~.gfe.DAProjections`, else the layer's own ``to_k/to_v`` (zero-shot).

Every attention here calls :func:`.attention.dressing_attention` / :func:`.attention.sdpa_attention`,
the same code the ComfyUI patch runs.  Layer keys come from :mod:`.keys`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .attention import DAForm, dressing_attention, masks_to_tokens, sdpa_attention, split_rows, tokens_hw
from .errors import AnyDressingError
from .features import BlockKey, GarmentFeatures, GarmentsNetContext, garment_kv
from .gfe import DEFAULT_ALPHA, DEFAULT_RANK, DAProjections, GFELoRA
from .keys import base_shape, diffusers_layer_keys

def attn1_modules(unet) -> Dict[BlockKey, nn.Module]:
    """``{key: transformer_block.attn1}`` for every transformer block of ``unet``, ComfyUI order."""
    mods = dict(unet.named_modules())
    return {key: mods[f"{name}.attn1"] for name, key in diffusers_layer_keys(unet.config).items()}


def _attn2_modules(unet) -> Dict[BlockKey, nn.Module]:
    mods = dict(unet.named_modules())
    return {key: mods[f"{name}.attn2"] for name, key in diffusers_layer_keys(unet.config).items()
            if getattr(mods[name], "attn2", None) is not None}


def _to_out(attn, o: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](o))


class ZeroAttnProcessor:
    """attn2 of GarmentsNet: removed [paper]; exact zeros keep the residual unchanged."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return torch.zeros_like(hidden_states)


class GarmentsNetAttnProcessor:
    """attn1 of GarmentsNet: records F (the normed input) and applies the GFE LoRA of each row's slot."""

    def __init__(self, key: BlockKey, owner: "GarmentsNet"):
        self.key = key
        self.owner = owner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        n = hidden_states
        owner = self.owner
        if owner._recording is not None:
            owner._recording[self.key] = n
        q, k, v = attn.to_q(n), attn.to_k(n), attn.to_v(n)
        gfe, ids = owner.gfe, owner._slot_ids
        use_gfe = gfe is not None and ids is not None and gfe.has(self.key)
        if use_gfe:
            q, k, v = gfe.qkv(self.key, n, q, k, v, ids)
        o = sdpa_attention(q, k, v, attn.heads)  # per row = per garment [paper]
        out = attn.to_out[0](o)
        if use_gfe:
            out = gfe.out(self.key, o, out, ids)
        return attn.to_out[1](out)


class GarmentsNet(nn.Module):
    """A diffusers UNet used as GarmentsNet: GFE LoRA per slot, attn2 per ``context``."""

    def __init__(self, unet, slots: Optional[Sequence[str]] = None, rank: int = DEFAULT_RANK,
                 alpha: float = DEFAULT_ALPHA, context: str = "none", gfe: Optional[GFELoRA] = None):
        super().__init__()
        if context not in GarmentsNetContext.ALL:
            raise AnyDressingError(f"unknown GarmentsNet context {context!r}; use one of {GarmentsNetContext.ALL}")
        self.unet = unet
        self.context = context
        attn1 = attn1_modules(unet)
        self.keys: List[BlockKey] = list(attn1)
        if gfe is None and slots:
            p = next(unet.parameters())
            gfe = GFELoRA({k: m.to_q.in_features for k, m in attn1.items()}, slots, rank, alpha,
                          dtype=p.dtype, device=p.device)
        self.gfe = gfe
        self._recording: Optional[Dict[BlockKey, torch.Tensor]] = None
        self._slot_ids: Optional[torch.Tensor] = None
        for key, m in attn1.items():
            m.set_processor(GarmentsNetAttnProcessor(key, self))
        if context == "none":
            for m in _attn2_modules(unet).values():
                m.set_processor(ZeroAttnProcessor())

    def encode(self, latents: torch.Tensor, slots: Sequence[str], weights: Optional[Sequence[float]] = None,
               encoder_hidden_states: Optional[torch.Tensor] = None, names: Optional[Sequence[str]] = None,
               timestep: float = 0.0, form: Optional[str] = None,
               added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None) -> GarmentFeatures:
        """Garment latents ``[N, 4, h, w]`` (clean, one garment per row) -> :class:`GarmentFeatures`.

        Runs the UNet once at ``timestep`` (0 [paper]); ``tokens[key]`` is ``[N, h_l*w_l, C]``.
        ``encoder_hidden_states`` ``[N or 1, S, D]``: ignored with context ``"none"`` (zeros are
        passed), required otherwise.  ``added_cond_kwargs``: an SDXL-shaped UNet's ``text_embeds
        [N or 1, P]`` and ``time_ids [N or 1, 6]`` (default zeros; ``conditioning.garment_cond`` builds
        the garment pass's).
        """
        n = latents.shape[0]
        if len(slots) != n:
            raise AnyDressingError(f"{n} garment latents but {len(slots)} slots; give one slot per garment")
        if encoder_hidden_states is None:
            if self.context != "none":
                raise AnyDressingError(f"GarmentsNet context {self.context!r} needs encoder_hidden_states")
            dim = self.unet.config.cross_attention_dim
            encoder_hidden_states = latents.new_zeros(n, 1, dim if isinstance(dim, int) else dim[0])
        elif encoder_hidden_states.shape[0] == 1 and n > 1:
            encoder_hidden_states = encoder_hidden_states.expand(n, -1, -1)
        self._recording = {}
        self._slot_ids = self.gfe.slot_ids(slots, latents.device) if self.gfe is not None else None
        try:
            t = torch.full((n,), float(timestep), device=latents.device)
            added = _zero_added_cond(self.unet, n, latents) if added_cond_kwargs is None else \
                {k: v.expand(n, -1) if v.shape[0] == 1 else v for k, v in added_cond_kwargs.items()}
            self.unet(latents, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
            tokens = {k: self._recording[k] for k in self.keys}
        finally:
            self._recording, self._slot_ids = None, None
        return GarmentFeatures.of(tokens, slots, weights, names, form=form, gfe=self.gfe is not None,
                                  base=base_shape(self.unet.config),
                                  latent_hw=tuple(int(x) for x in latents.shape[-2:]))


def _zero_added_cond(unet, n, like):
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        return None
    dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"text_embeds": like.new_zeros(n, dim), "time_ids": like.new_zeros(n, 6)}


def build_garments_net(unet, slots: Optional[Sequence[str]] = None, rank: int = DEFAULT_RANK,
                       alpha: float = DEFAULT_ALPHA, context: str = "none") -> GarmentsNet:
    """Turn ``unet`` (a copy of the base UNet [paper: initialised from it]) into GarmentsNet.

    ``slots=None`` gives no GFE (zero-shot / imported weights).  The UNet is modified in place
    (processors); its weights are untouched.
    """
    return GarmentsNet(unet, slots, rank, alpha, context)


@dataclass
class DressingState:
    """Per-call settings of :class:`DressingAttention` (see :meth:`DressingAttention.use`)."""

    features: Optional[GarmentFeatures] = None
    strength: float = 1.0
    form: Optional[str] = None
    weights: Optional[Sequence[float]] = None
    region_masks: Optional[torch.Tensor] = None
    latent_hw: Optional[Sequence[int]] = None
    garment_rows: Optional[torch.Tensor] = None
    record_maps: bool = False
    maps: Dict[BlockKey, torch.Tensor] = field(default_factory=dict)
    kv: Dict[BlockKey, tuple] = field(default_factory=dict)  # K', V' per layer, for this context only


class DressingAttnProcessor:
    """attn1 of DressingNet: Dressing-Attention via :func:`.attention.dressing_attention`."""

    def __init__(self, key: BlockKey, owner: "DressingAttention"):
        self.key = key
        self.owner = owner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        x = hidden_states
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        st = self.owner.state
        feats = st.features if st is not None else None
        if feats is None or feats.count == 0 or self.key not in feats.tokens or st.strength == 0.0:
            # neutral settings are the plain model bit for bit
            return _to_out(attn, sdpa_attention(q, k, v, attn.heads))
        gk, gv = self.owner.garment_kv(self.key, attn, feats, x)
        form = st.form or feats.form or DAForm.SEPARATE
        weights = st.weights if st.weights is not None else feats.weights
        lengths = feats.lengths(self.key)
        regions = None
        if st.region_masks is not None:
            hw = tokens_hw(st.latent_hw, x.shape[1])
            regions = masks_to_tokens(st.region_masks.to(x.device), hw).to(x.dtype)
        b = x.shape[0]
        flags = [True] * b if st.garment_rows is None else [bool(r) for r in st.garment_rows.tolist()]

        def dressed(rows: slice):
            r = regions if regions is None or regions.shape[0] == 1 else regions[rows]
            res = dressing_attention(q[rows], k[rows], v[rows], gk, gv, attn.heads, lengths, strength=st.strength,
                                     form=form, weights=weights, regions=r, return_maps=st.record_maps,
                                     token_size=feats.token_size(self.key))
            if st.record_maps:
                res, maps = res
                st.maps[self.key] = maps
            return res

        def plain(rows: slice):
            return sdpa_attention(q[rows], k[rows], v[rows], attn.heads)

        return _to_out(attn, split_rows(flags, dressed, plain))


class DressingAttention(nn.Module):
    """Dressing-Attention installed on every attn1 of a diffusers UNet (DressingNet, frozen [paper])."""

    def __init__(self, unet, projections: Union[None, str, DAProjections] = None, trainable: bool = True,
                 form: str = DAForm.SEPARATE):
        super().__init__()
        if form not in DAForm.ALL:
            raise AnyDressingError(f"unknown DA form {form!r}; use one of {DAForm.ALL}")
        self.form = form
        attn1 = attn1_modules(unet)
        self.keys: List[BlockKey] = list(attn1)
        if projections == "copy":
            projections = DAProjections.from_modules({k: m.to_k for k, m in attn1.items()},
                                                     {k: m.to_v for k, m in attn1.items()}, trainable=trainable)
        elif isinstance(projections, str):
            raise AnyDressingError(f"projections must be None, 'copy' or DAProjections, not {projections!r}")
        if projections is not None:
            missing = [k for k in self.keys if not projections.has(k)]
            if missing:
                raise AnyDressingError(f"DA projections miss layers {missing[:6]} of this UNet "
                                       f"({len(projections.keys)} given, {len(self.keys)} needed)")
        self.projections = projections
        self.state: Optional[DressingState] = None
        self._last_maps: Dict[BlockKey, torch.Tensor] = {}
        self._unet = [unet]  # not a submodule: DressingNet's weights are not ours
        self._previous = {k: m.processor for k, m in attn1.items()}
        for key, m in attn1.items():
            m.set_processor(DressingAttnProcessor(key, self))

    @property
    def maps(self) -> Dict[BlockKey, torch.Tensor]:
        """``A_k`` per layer from the last call with ``record_maps=True``: ``{key: [B_on, T, N]}``."""
        return self.state.maps if self.state is not None else self._last_maps

    def garment_kv(self, key, attn, feats: GarmentFeatures, like: torch.Tensor):
        """K', V' ``[1, N*L, C]`` of one layer, computed once per :meth:`use` context."""
        cache = self.state.kv
        if key not in cache:
            if feats.projections is None and self.projections is not None:
                feats = self.projections.attach(feats)
            cache[key] = garment_kv(feats, key, attn.to_k, attn.to_v, like)
        return cache[key]

    @contextlib.contextmanager
    def use(self, features: Optional[GarmentFeatures], strength: float = 1.0, form: Optional[str] = None,
            weights: Optional[Sequence[float]] = None, region_masks: Optional[torch.Tensor] = None,
            latent_hw: Optional[Sequence[int]] = None, garment_rows: Optional[torch.Tensor] = None,
            record_maps: bool = False):
        """Run the UNet inside this context to apply DA with these settings.

        ``form=None`` uses ``features.form`` then the installed form.  ``region_masks [N, H, W]``
        need ``latent_hw`` (the latent's h, w).  ``garment_rows [B]`` bool selects the rows that get
        garments (default all).
        """
        if region_masks is not None and latent_hw is None:
            raise AnyDressingError("region_masks need latent_hw (the latent's height and width)")
        previous = self.state
        self.state = DressingState(features=features, strength=float(strength), form=form or None,
                                   weights=weights, region_masks=region_masks, latent_hw=latent_hw,
                                   garment_rows=garment_rows, record_maps=record_maps)
        if features is not None and self.state.form is None:
            self.state.form = features.form or self.form
        try:
            yield self.state
        finally:
            self._last_maps = self.state.maps
            self.state = previous

    def remove(self):
        """Restore the processors that were installed before."""
        attn1 = attn1_modules(self._unet[0])
        for key, m in attn1.items():
            m.set_processor(self._previous[key])


def install_dressing_attention(unet, projections: Union[None, str, DAProjections] = None, trainable: bool = True,
                               form: str = DAForm.SEPARATE) -> DressingAttention:
    """Install DA on every attn1 of ``unet``.

    ``projections``: None (zero-shot: K'/V' from the layer's own to_k/to_v), ``"copy"`` (new
    trainable Wk', Wv' initialised as copies of Wk, Wv [paper]) or loaded :class:`DAProjections`.
    Outside :meth:`DressingAttention.use` (or with no garments) the UNet computes exactly its
    plain self-attention.
    """
    return DressingAttention(unet, projections, trainable, form)
