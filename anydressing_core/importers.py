"""Importers for the nearest released weights, recognised by state-dict KEYS (never file names).

Layouts of the released peer weights (docs/FORMAT.md lists the files):

* ``diffusers_unet``: plain diffusers UNet keys (``conv_in.weight``, ``down_blocks.0...``).
  Alone it is MagicClothing "joint" (GarmentsNet only; DressingNet appends the garment tokens
  to its own keys/values with its own weights: joint DA form, Wk' = Wk, Wv' = Wv).  Also the
  garment extractor of MagicClothing "stable".
* ``ip_layer``: ``{2j}.to_k_ip.weight`` / ``{2j}.to_v_ip.weight`` (MagicClothing stable), bias-free,
  j numbering attn1 layers in diffusers ``attn_processors`` order (:func:`.keys.processor_order`):
  Wk', Wv' of the separate DA form.
* ``imagdressing``: ``ref_unet.*`` (diffusers UNet), ``adapter_modules.{2j}.to_k_ref.weight`` /
  ``to_v_ref.weight`` (same numbering), ``proj.*`` (an IP-Adapter-plus style resampler over
  CLIP-ViT-H tokens that IMAGDressing feeds to ref_unet's attn2).  The resampler is stored under
  ``resampler.*``; AnyDressing Encode Garments runs it (:mod:`.resampler`) when a CLIP vision model is
  connected, as docs/FORMAT.md says.

All three are non-commercial (MagicClothing CC BY-NC-SA 4.0, IMAGDressing research only); the
licence is written into the converted file's metadata.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Mapping, Optional, Sequence

import torch

from .attention import DAForm
from .checkpoint import AnyDressingAdapter, CheckpointMeta
from .errors import AnyDressingError
from .gfe import DAProjections
from .keys import base_shape, diffusers_layer_keys, layer_channels, processor_order

log = logging.getLogger(__name__)

LICENCE_MAGICCLOTHING = "CC BY-NC-SA 4.0 (ShineChen1024/MagicClothing): non-commercial"
LICENCE_IMAGDRESSING = "research only, non-commercial (feishen29/IMAGDressing)"

_IP_RE = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_REF_RE = re.compile(r"^adapter_modules\.(\d+)\.to_([kv])_ref\.weight$")
_UNET_MARKERS = ("conv_in.weight", "conv_out.weight")


def _is_unet(names) -> bool:
    names = set(names)
    return all(m in names for m in _UNET_MARKERS) and any(n.startswith("down_blocks.") for n in names)


def unwrap(sd: Mapping) -> Mapping:
    """Unwrap training-wrapper dicts (``{"module": ...}``, ``{"state_dict": ...}``)."""
    for wrapper in ("module", "state_dict"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping) and len(sd) <= 4:
            return sd[wrapper]
    return sd


def detect_layout(sd: Mapping) -> Optional[str]:
    """``"diffusers_unet"``, ``"ip_layer"``, ``"imagdressing"`` or None, from key names only."""
    names = list(sd)
    if any(n.startswith("ref_unet.") for n in names) and any(_REF_RE.match(n) for n in names):
        return "imagdressing"
    if names and all(_IP_RE.match(n) for n in names):
        return "ip_layer"
    if _is_unet(names):
        return "diffusers_unet"
    return None


def infer_unet_config(sd: Mapping[str, torch.Tensor]) -> Dict:
    """A diffusers ``UNet2DConditionModel`` config from a state dict's keys and shapes.

    Heads cannot be read from weights: SD1.5-shaped UNets get 8 heads (``attention_head_dim=8``
    in diffusers' naming), SDXL-shaped ones 64-wide heads [assumption, true for the released bases].
    """
    names = list(sd)
    levels = sorted({int(n.split(".")[1]) for n in names if n.startswith("down_blocks.")})
    chans = [int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels]
    layers = len({n.split(".")[3] for n in names if n.startswith("down_blocks.0.resnets.")})

    def depth(prefix):
        ids = {int(n[len(prefix):].split(".")[0]) for n in names if n.startswith(prefix)}
        return max(ids) + 1 if ids else 0

    down = ["CrossAttnDownBlock2D" if depth(f"down_blocks.{i}.attentions.") else "DownBlock2D" for i in levels]
    up = ["CrossAttnUpBlock2D" if depth(f"up_blocks.{i}.attentions.") else "UpBlock2D" for i in levels]
    tl = [max(depth(f"down_blocks.{i}.attentions.0.transformer_blocks."), 1) for i in levels]
    mid = "UNetMidBlock2DCrossAttn" if depth("mid_block.attentions.") else None
    ctx_key = next((n for n in names if n.endswith("attn2.to_k.weight")), None)
    proj = next((n for n in names if n.endswith("proj_in.weight") and "attentions" in n), None)
    sdxl = any(n.startswith("add_embedding.") for n in names)
    config = {
        "in_channels": int(sd["conv_in.weight"].shape[1]),
        "out_channels": int(sd["conv_out.weight"].shape[0]),
        "block_out_channels": chans,
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": mid,
        "transformer_layers_per_block": tl,
        "cross_attention_dim": int(sd[ctx_key].shape[1]) if ctx_key else 768,
        "use_linear_projection": bool(proj and sd[proj].ndim == 2),
        "attention_head_dim": [max(c // 64, 1) for c in chans] if sdxl else 8,
    }
    if sdxl:
        config["addition_embed_type"] = "text_time"
        config["addition_time_embed_dim"] = int(sd["add_time_proj.linear_1.weight"].shape[1]) \
            if "add_time_proj.linear_1.weight" in sd else 256
        config["projection_class_embeddings_input_dim"] = int(sd["add_embedding.linear_1.weight"].shape[1])
    return config


def _projections(pairs: Dict[int, Dict[str, torch.Tensor]], config: Dict, what: str) -> DAProjections:
    order = processor_order(config)
    idx = sorted(pairs)
    expected = [2 * j for j in range(len(order))]
    if idx != expected:
        raise AnyDressingError(
            f"{what} numbers {len(idx)} attention modules ({idx[:4]}...{idx[-2:]}) but its UNet has {len(order)} "
            f"self-attention layers (expected indices {expected[:3]}...{expected[-1:]}); the two files do not belong "
            "together (another base model?)")
    weights = {}
    for j, key in enumerate(order):
        p = pairs[2 * j]
        if "k" not in p or "v" not in p:
            raise AnyDressingError(f"{what}: module {2 * j} lacks to_k or to_v")
        weights[key] = (p["k"], p["v"])
    return DAProjections(weights)


def _check_projection_widths(proj: DAProjections, config: Dict, what: str):
    widths = layer_channels(proj.keys, config)
    for key in proj.keys:
        wk, wv = proj.weights(key)
        want = (widths[key], widths[key])
        if tuple(wk.shape) != want or tuple(wv.shape) != want:
            raise AnyDressingError(f"{what}: projections for layer {key} are {list(wk.shape)}/{list(wv.shape)}, the "
                                   f"UNet's layer is {widths[key]} wide; the files do not belong together")


def import_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], source: str = "",
                       default_lambda: Optional[float] = None) -> AnyDressingAdapter:
    """Combine peer state dicts (any order) into an :class:`AnyDressingAdapter`.

    Accepted combinations: one ``diffusers_unet`` (MagicClothing joint); ``diffusers_unet`` +
    ``ip_layer`` (MagicClothing stable); one ``imagdressing``.
    """
    found: Dict[str, Mapping] = {}
    for sd in state_dicts:
        sd = unwrap(sd)
        layout = detect_layout(sd)
        if layout is None:
            sample = sorted(sd)[:5]
            raise AnyDressingError(
                f"{source or 'input'}: keys {sample} match no known layout (AnyDressing, MagicClothing joint/stable, "
                "IMAGDressing); see docs/FORMAT.md for the layouts this pack imports")
        if layout in found:
            raise AnyDressingError(f"two inputs with the {layout} layout; give each part once")
        found[layout] = sd
    provenance = {"imported_from": sorted(found), "source": source}

    if "imagdressing" in found:
        if len(found) > 1:
            raise AnyDressingError(f"IMAGDressing weights stand alone; got also {sorted(set(found) - {'imagdressing'})}")
        sd = found["imagdressing"]
        unet = {k[len("ref_unet."):]: v for k, v in sd.items() if k.startswith("ref_unet.")}
        pairs: Dict[int, Dict[str, torch.Tensor]] = {}
        resampler, other = {}, []
        for k, v in sd.items():
            m = _REF_RE.match(k)
            if m:
                pairs.setdefault(int(m.group(1)), {})[m.group(2)] = v
            elif k.startswith("proj."):
                resampler[k[len("proj."):]] = v
            elif not k.startswith("ref_unet."):
                other.append(k)
        if other:
            raise AnyDressingError(f"IMAGDressing file has keys outside ref_unet./adapter_modules./proj.: {sorted(other)[:5]}")
        config = infer_unet_config(unet)
        proj = _projections(pairs, config, "IMAGDressing adapter_modules")
        _check_projection_widths(proj, config, "IMAGDressing")
        meta = _meta(config, DAForm.SEPARATE, "image_tokens", LICENCE_IMAGDRESSING, provenance,
                     1.0 if default_lambda is None else default_lambda)
        return AnyDressingAdapter(meta, None, proj, dict(unet), resampler or None, source)

    if "diffusers_unet" not in found:
        raise AnyDressingError("MagicClothing ip_layer projections need the garment extractor UNet too "
                               "(stable_ckpt/garment_extractor.safetensors); pass both files")
    unet = dict(found["diffusers_unet"])
    config = infer_unet_config(unet)
    if "ip_layer" in found:
        pairs = {}
        for k, v in found["ip_layer"].items():
            m = _IP_RE.match(k)
            pairs.setdefault(int(m.group(1)), {})[m.group(2)] = v
        proj = _projections(pairs, config, "MagicClothing ip_layer")
        _check_projection_widths(proj, config, "MagicClothing stable")
        meta = _meta(config, DAForm.SEPARATE, "empty_prompt", LICENCE_MAGICCLOTHING, provenance,
                     1.0 if default_lambda is None else default_lambda)
        return AnyDressingAdapter(meta, None, proj, unet, None, source)
    meta = _meta(config, DAForm.JOINT, "empty_prompt", LICENCE_MAGICCLOTHING, provenance,
                 1.0 if default_lambda is None else default_lambda)
    return AnyDressingAdapter(meta, None, None, unet, None, source)


def _meta(config, form, context, licence, provenance, default_lambda) -> CheckpointMeta:
    """[choice] imported weights default to lambda 1.0: the peers trained and sample at scale 1."""
    return CheckpointMeta(base=base_shape(config), layers=list(diffusers_layer_keys(config).values()),
                          form=form, garments_net_context=context, unet_config=config, provenance=provenance,
                          licence=licence, default_lambda=float(default_lambda))
