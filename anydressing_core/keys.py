"""The one mapping between diffusers module names and ComfyUI block keys.

A self-attention layer is named by ComfyUI's key ``(block_name, block_id, transformer_index)``
(``features.BlockKey``), e.g. ``("input", 1, 0)``.  Diffusers names the same layer
``down_blocks.0.attentions.0.transformer_blocks.0``.  Everything here is derived from a
``UNet2DConditionModel`` config (``block types``, ``layers_per_block``,
``transformer_layers_per_block``), never from a hard-coded SD1.5 list, so SDXL-shaped and tiny
UNets map the same way.

ComfyUI numbering (``comfy/ldm/modules/diffusionmodules/openaimodel.py``):

* ``input_blocks[0]`` is ``conv_in``; level ``i`` then has ``layers_per_block[i]`` res(+attention)
  blocks, followed by a downsampler block on every level but the last.
* ``middle_block`` has one transformer stack: ``("middle", 0, k)``.
* ``output_blocks`` run from the deepest level up, ``layers_per_block[level] + 1`` blocks each.

Diffusers' ``attn_processors`` order (down blocks, up blocks, mid block; attn1 then attn2 in each
transformer block) is what IP-Adapter-style checkpoints number their modules by
(``adapter_modules.{2j}`` = attn1 of the j-th transformer block): :func:`processor_order`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .features import BlockKey, key_from_str, key_to_str

__all__ = [
    "BlockKey", "key_to_str", "key_from_str", "diffusers_layer_keys", "processor_order",
    "module_to_key", "ldm_unet_config", "base_shape", "sort_keys", "layer_channels",
]

_CROSS_DOWN = ("CrossAttnDownBlock2D",)
_CROSS_UP = ("CrossAttnUpBlock2D",)
_CROSS_MID = ("UNetMidBlock2DCrossAttn",)


def _get(config: Any, name: str, default=None):
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _per_block(value, n: int) -> List:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"config gives {len(value)} values where the UNet has {n} blocks: {value!r}")
        return list(value)
    return [value] * n


def _levels(config) -> Tuple[List[str], List[str], str, List[int], List[List[int]], List[List[int]]]:
    down = list(_get(config, "down_block_types"))
    up = list(_get(config, "up_block_types"))
    mid = _get(config, "mid_block_type", "UNetMidBlock2DCrossAttn")
    n = len(down)
    layers = [int(x) for x in _per_block(_get(config, "layers_per_block", 2), n)]
    tl = _per_block(_get(config, "transformer_layers_per_block", 1), n)
    down_depth = [[int(d)] * layers[i] if isinstance(d, int) else [int(x) for x in d] for i, d in enumerate(tl)]
    rev = _get(config, "reverse_transformer_layers_per_block", None)
    rev_layers = list(reversed(layers))
    if rev is None:
        rev_tl = list(reversed([d if isinstance(d, int) else d[0] for d in tl]))
        up_depth = [[int(rev_tl[i])] * (rev_layers[i] + 1) for i in range(n)]
    else:
        up_depth = [[int(x) for x in r] for r in rev]
    return down, up, mid, layers, down_depth, up_depth


def _mid_depth(config, down_depth) -> int:
    tl = _get(config, "transformer_layers_per_block", 1)
    last = tl[-1] if isinstance(tl, (list, tuple)) else tl
    return int(last if isinstance(last, int) else last[-1])


def diffusers_layer_keys(config) -> "OrderedDict[str, BlockKey]":
    """Every transformer block of a diffusers UNet and its ComfyUI key, in ComfyUI order.

    Returns ``{"down_blocks.0.attentions.0.transformer_blocks.0": ("input", 1, 0), ...}`` ordered
    input blocks, middle, output blocks (the order ComfyUI runs them).
    """
    down, up, mid, layers, down_depth, up_depth = _levels(config)
    out: "OrderedDict[str, BlockKey]" = OrderedDict()
    block_id = 1
    for i, kind in enumerate(down):
        for j in range(layers[i]):
            if kind in _CROSS_DOWN:
                for k in range(down_depth[i][j]):
                    out[f"down_blocks.{i}.attentions.{j}.transformer_blocks.{k}"] = ("input", block_id, k)
            block_id += 1
        if i != len(down) - 1:
            block_id += 1  # downsampler
    if mid in _CROSS_MID:
        for k in range(_mid_depth(config, down_depth)):
            out[f"mid_block.attentions.0.transformer_blocks.{k}"] = ("middle", 0, k)
    rev_layers = list(reversed(layers))
    block_id = 0
    for i, kind in enumerate(up):
        for j in range(rev_layers[i] + 1):
            if kind in _CROSS_UP:
                for k in range(up_depth[i][j]):
                    out[f"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}"] = ("output", block_id, k)
            block_id += 1
    return out


def processor_order(config) -> List[BlockKey]:
    """ComfyUI keys in diffusers ``attn_processors`` order: down blocks, up blocks, mid block.

    IP-Adapter-style files number attn1 of the j-th transformer block ``2j`` in this order.
    """
    keys = diffusers_layer_keys(config)
    order = [n for n in keys if n.startswith("down_blocks.")]
    order += [n for n in keys if n.startswith("up_blocks.")]
    order += [n for n in keys if n.startswith("mid_block.")]
    return [keys[n] for n in order]


_MODULE_RE = re.compile(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+")


def module_to_key(name: str, config) -> BlockKey:
    """ComfyUI key of a diffusers module name (or any name below a transformer block).

    ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"`` -> ``("input", 1, 0)``.
    """
    m = _MODULE_RE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not inside a diffusers transformer block "
                         "(expected down_blocks.I.attentions.J.transformer_blocks.K...)")
    keys = diffusers_layer_keys(config)
    try:
        return keys[m.group(0)]
    except KeyError:
        raise ValueError(f"{m.group(0)!r} does not exist in a UNet with this config "
                         f"({len(keys)} transformer blocks)") from None


def sort_keys(keys) -> List[BlockKey]:
    """ComfyUI run order: input by id, middle, output by id; transformer index inside."""
    rank = {"input": 0, "middle": 1, "output": 2}
    return sorted(keys, key=lambda k: (rank[k[0]], int(k[1]), int(k[2])))


def ldm_unet_config(config) -> Dict[str, Any]:
    """The part of a ComfyUI (LDM) ``unet_config`` that ``comfy.utils.unet_to_diffusers`` needs.

    ``num_res_blocks`` and ``channel_mult`` per level, ``transformer_depth`` per input res block,
    ``transformer_depth_output`` per output block (listed shallow level first, as ComfyUI pops
    it from the end), ``transformer_depth_middle``.
    """
    down, up, mid, layers, down_depth, up_depth = _levels(config)
    chans = list(_get(config, "block_out_channels"))
    depth = []
    for i, kind in enumerate(down):
        depth += [d if kind in _CROSS_DOWN else 0 for d in down_depth[i]]
    out_rev = []  # deepest level first, as diffusers numbers up blocks
    for i, kind in enumerate(up):
        out_rev.append([d if kind in _CROSS_UP else 0 for d in up_depth[i]])
    depth_output = [d for level in reversed(out_rev) for d in level]
    return {
        "num_res_blocks": layers,
        "channel_mult": [c // chans[0] for c in chans],
        "model_channels": chans[0],
        "transformer_depth": depth,
        "transformer_depth_output": depth_output,
        "transformer_depth_middle": _mid_depth(config, down_depth) if mid in _CROSS_MID else -1,
        "context_dim": _get(config, "cross_attention_dim"),
        "in_channels": _get(config, "in_channels", 4),
    }


def base_shape(config) -> str:
    """``"sdxl"`` when the UNet has SDXL's add-embedding (text_time), else ``"sd15"``."""
    if _get(config, "addition_embed_type") == "text_time":
        return "sdxl"
    return "sd15"


def layer_channels(keys: Sequence[BlockKey], config) -> Dict[BlockKey, int]:
    """Channels of attn1 at each layer, from ``block_out_channels`` (diffusers config)."""
    names = {v: k for k, v in diffusers_layer_keys(config).items()}
    chans = list(_get(config, "block_out_channels"))
    out = {}
    for key in keys:
        name = names[key]
        if name.startswith("down_blocks."):
            out[key] = chans[int(name.split(".")[1])]
        elif name.startswith("up_blocks."):
            out[key] = list(reversed(chans))[int(name.split(".")[1])]
        else:
            out[key] = chans[-1]
    return out
