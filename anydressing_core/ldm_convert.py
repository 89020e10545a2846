"""Key conversion from single-file (LDM / A1111 / ComfyUI) checkpoints to diffusers and transformers modules.

Pure functions over state dicts (no file access, no download; :mod:`.single_file` reads the files):

* :func:`unet_layout` / :func:`unet_config` read the UNet's structure from its ``model.diffusion_model.*``
  keys and shapes; :func:`unet_to_diffusers` renames its tensors to ``UNet2DConditionModel`` keys.
* :func:`vae_to_diffusers` (``first_stage_model.*`` -> ``AutoencoderKL``), :func:`taesd_to_diffusers`
  (``first_stage_model.taesd_encoder/decoder.*`` -> ``AutoencoderTiny``).
* :func:`clip_to_transformers` (OpenAI CLIP text model in Hugging Face layout, as SD1.5 and SDXL's first
  encoder store it) and :func:`open_clip_to_transformers` (SDXL's OpenCLIP ViT-bigG ``model.*`` layout ->
  ``CLIPTextModelWithProjection``).

Names are derived from the block structure, never from a fixed SD1.5 table, so tiny test UNets and
SDXL-shaped ones convert the same way (docs/TRAINING.md, "The base").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

from .errors import AnyDressingError

#: LDM ResBlock sub-module names -> diffusers ResnetBlock2D names.
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_FIXED = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
          "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
          "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.*)$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.*)$")
_DEPTH = re.compile(r"^(?:(input_blocks|output_blocks)\.(\d+)|(middle_block))\.(\d+)\.transformer_blocks\.(\d+)\.")


@dataclass
class UNetLayout:
    """The structure of an LDM UNet, as read from its keys.

    ``levels[i]`` = (channels, number of res blocks) of resolution level ``i``;
    ``down_depth[i]`` / ``up_depth[i]`` = transformer depth of each res block of level ``i`` (input
    side, output side deepest level first, as diffusers numbers ``up_blocks``); ``mid_depth`` =
    transformer depth of the middle block (None: no middle transformer).
    """

    levels: List[Tuple[int, int]] = field(default_factory=list)
    down_depth: List[List[int]] = field(default_factory=list)
    up_depth: List[List[int]] = field(default_factory=list)
    mid_depth: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    context_dim: int = 768
    linear_projection: bool = False
    adm_in_channels: int | None = None


def _resnet_name(rest: str) -> str:
    for old, new in _RESNET.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    raise AnyDressingError(f"unknown ResBlock tensor {rest!r} in the UNet")


def _depths(shapes: Mapping[str, Sequence[int]]) -> Dict[Tuple[str, int], int]:
    """``{(part, block): transformer depth}`` for every block holding a transformer (its sub-module ``1``)."""
    out: Dict[Tuple[str, int], int] = {}
    for name in shapes:
        m = _DEPTH.match(name)
        if m and m.group(4) == "1":
            key = (m.group(1), int(m.group(2))) if m.group(1) else ("middle_block", 1)
            out[key] = max(out.get(key, 0), int(m.group(5)) + 1)
    return out


def unet_layout(shapes: Mapping[str, Sequence[int]]) -> UNetLayout:
    """Structure of an LDM UNet from ``{key: shape}`` (keys without the ``model.diffusion_model.`` prefix)."""
    if "input_blocks.0.0.weight" not in shapes or "out.2.weight" not in shapes:
        raise AnyDressingError("the checkpoint has no LDM UNet (model.diffusion_model.input_blocks.0.0.weight / "
                               "out.2.weight missing); give an SD1.5 or SDXL single-file checkpoint")
    depth = _depths(shapes)
    n_in = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("input_blocks."))
    layout = UNetLayout()
    chans, count, down = None, 0, []
    for n in range(1, n_in):
        if f"input_blocks.{n}.0.op.weight" in shapes:  # downsampler closes a level
            layout.levels.append((chans, count))
            layout.down_depth.append(down)
            chans, count, down = None, 0, []
            continue
        width = int(shapes[f"input_blocks.{n}.0.out_layers.3.weight"][0])
        if chans is not None and width != chans:
            raise AnyDressingError(f"input block {n} changes width inside a level ({chans} -> {width}); "
                                   "not an SD1.5/SDXL-style UNet")
        chans, count = width, count + 1
        down.append(depth.get(("input_blocks", n), 0))
    layout.levels.append((chans, count))
    layout.down_depth.append(down)
    n_out = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks."))
    block = 0
    for _, res in reversed(layout.levels):
        layout.up_depth.append([depth.get(("output_blocks", block + j), 0) for j in range(res + 1)])
        block += res + 1
    if block != n_out:
        raise AnyDressingError(f"the UNet has {n_out} output blocks, its input side implies {block}; "
                               "not an SD1.5/SDXL-style UNet")
    if "middle_block.2.out_layers.3.weight" in shapes:
        layout.mid_depth = depth.get(("middle_block", 1), 0)
    elif any(k.startswith("middle_block.") for k in shapes):
        raise AnyDressingError("the UNet's middle block is a single ResBlock (transformer_depth_middle=-1), which "
                               "diffusers' UNet2DConditionModel cannot hold; this base is not supported")
    layout.in_channels = int(shapes["input_blocks.0.0.weight"][1])
    layout.out_channels = int(shapes["out.2.weight"][0])
    ctx = next((s for k, s in shapes.items() if k.endswith(".attn2.to_k.weight")), None)
    if ctx is None:
        raise AnyDressingError("the UNet has no cross-attention (attn2) layer; AnyDressing needs an SD1.5/SDXL UNet")
    layout.context_dim = int(ctx[1])
    proj = next(s for k, s in shapes.items() if k.endswith(".1.proj_in.weight"))
    layout.linear_projection = len(proj) == 2
    if "label_emb.0.0.weight" in shapes:
        layout.adm_in_channels = int(shapes["label_emb.0.0.weight"][1])
    return layout


def _level_depth(depths: List[int], where: str) -> int:
    if len(set(depths)) != 1:
        raise AnyDressingError(f"{where} has res blocks with different transformer depths {depths}; diffusers' "
                               "UNet2DConditionModel needs one depth per level")
    return depths[0]


def unet_config(layout: UNetLayout, base: str) -> Dict:
    """The ``UNet2DConditionModel`` config of ``layout``.

    Heads are not stored in weights: SD1.5 has 8 heads per layer, SDXL 64-channel heads [the released
    bases' values; diffusers calls both ``attention_head_dim``].
    """
    chans = [c for c, _ in layout.levels]
    layers = [r for _, r in layout.levels]
    down_d = [_level_depth(d, f"input level {i}") for i, d in enumerate(layout.down_depth)]
    up_d = [_level_depth(d, f"output level {i}") for i, d in enumerate(layout.up_depth)]
    down_types = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in down_d]
    up_types = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in up_d]
    config = {
        "sample_size": 128 if base == "sdxl" else 64,
        "in_channels": layout.in_channels, "out_channels": layout.out_channels,
        "block_out_channels": chans,
        "layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "down_block_types": down_types, "up_block_types": up_types,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if layout.mid_depth else None,
        "transformer_layers_per_block": [max(d, 1) for d in down_d],
        "cross_attention_dim": layout.context_dim,
        "use_linear_projection": layout.linear_projection,
        "attention_head_dim": [max(c // 64, 1) for c in chans] if base == "sdxl" else 8,
    }
    if up_d != list(reversed(down_d)):
        config["reverse_transformer_layers_per_block"] = [[max(d, 1)] * (layers[-1 - i] + 1)
                                                          for i, d in enumerate(up_d)]
    if layout.mid_depth and layout.mid_depth != config["transformer_layers_per_block"][-1]:
        raise AnyDressingError(f"the middle block has {layout.mid_depth} transformer layers and the deepest level "
                               f"{down_d[-1]}; diffusers' UNet2DConditionModel ties the two, so this base is not "
                               "supported")
    if layout.adm_in_channels is not None:
        if base != "sdxl":
            raise AnyDressingError("the UNet has a class/size embedding (label_emb) but is not SDXL-shaped; "
                                   "only SD1.5 and SDXL bases are supported")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=layout.adm_in_channels)
    return config


def unet_key_map(layout: UNetLayout, names: Sequence[str]) -> Dict[str, str]:
    """``{LDM key: diffusers key}`` for every name in ``names`` (keys without the LDM prefix)."""
    table: Dict[Tuple[str, int], Tuple[str, str]] = {}  # (part, block) -> (kind, diffusers prefix)
    n = 1
    for i, (_, res) in enumerate(layout.levels):
        for j in range(res):
            table[("input_blocks", n)] = ("res_attn", f"down_blocks.{i}.resnets.{j}|down_blocks.{i}.attentions.{j}")
            n += 1
        if i < len(layout.levels) - 1:
            table[("input_blocks", n)] = ("down", f"down_blocks.{i}.downsamplers.0")
            n += 1
    n = 0
    for i, (_, res) in enumerate(reversed(layout.levels)):
        for j in range(res + 1):
            table[("output_blocks", n)] = ("up", f"up_blocks.{i}.resnets.{j}|up_blocks.{i}.attentions.{j}|"
                                                 f"up_blocks.{i}.upsamplers.0")
            n += 1
    out = {}
    for name in names:
        stem, _, leaf = name.rpartition(".")
        fixed = next((v for k, v in _FIXED.items() if stem == k), None)
        if fixed is not None:
            out[name] = f"{fixed}.{leaf}"
            continue
        mid = _MIDDLE.match(name)
        if mid and int(mid.group(1)) in (0, 1, 2):
            sub, rest = int(mid.group(1)), mid.group(2)
            prefix = ("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1")[sub]
            out[name] = f"{prefix}.{_resnet_name(rest) if sub != 1 else rest}"
            continue
        m = _BLOCK.match(name)
        if not m:
            raise AnyDressingError(f"unexpected UNet tensor {name!r}; not an SD1.5/SDXL-style UNet")
        part, block, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        kind, prefixes = table.get((part, block), (None, ""))
        parts = prefixes.split("|")
        if kind == "down" and rest.startswith("op."):
            out[name] = f"{parts[0]}.conv.{rest[3:]}"
        elif kind in ("res_attn", "up") and sub == 0:
            out[name] = f"{parts[0]}.{_resnet_name(rest)}"
        elif kind in ("res_attn", "up") and sub == 1 and not rest.startswith("conv."):
            out[name] = f"{parts[1]}.{rest}"
        elif kind == "up" and rest.startswith("conv."):
            out[name] = f"{parts[2]}.{rest}"
        else:
            raise AnyDressingError(f"unexpected UNet tensor {name!r}; not an SD1.5/SDXL-style UNet")
    return out


def unet_to_diffusers(sd: Mapping[str, object], layout: UNetLayout) -> Dict[str, object]:
    """LDM UNet tensors (no prefix) -> ``UNet2DConditionModel`` state dict."""
    mapping = unet_key_map(layout, list(sd))
    return {mapping[k]: v for k, v in sd.items()}


# ---- VAE ------------------------------------------------------------------------------------------------
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def vae_config(shapes: Mapping[str, Sequence[int]], scaling_factor: float) -> Dict:
    """``AutoencoderKL`` config from LDM VAE keys (no prefix)."""
    levels = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")})
    chans = [int(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0]) for i in levels]
    layers = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    return {
        "in_channels": int(shapes["encoder.conv_in.weight"][1]), "out_channels": int(shapes["decoder.conv_out.weight"][0]),
        "latent_channels": int(shapes["post_quant_conv.weight"][0]) if "post_quant_conv.weight" in shapes
        else int(shapes["decoder.conv_in.weight"][1]),
        "block_out_channels": chans, "layers_per_block": layers,
        "down_block_types": ["DownEncoderBlock2D"] * len(chans), "up_block_types": ["UpDecoderBlock2D"] * len(chans),
        "norm_num_groups": 32, "scaling_factor": scaling_factor, "sample_size": 512,
    }


def vae_to_diffusers(sd: Mapping[str, object], levels: int) -> Dict[str, object]:
    """LDM ``AutoencoderKL`` tensors (no prefix) -> diffusers ``AutoencoderKL`` state dict.

    The mid-block attention's 1x1 convolutions become linear weights (``[C, C, 1, 1]`` -> ``[C, C]``).
    """
    out = {}
    for name, value in sd.items():
        parts = name.split(".")
        side = parts[0]
        new = name
        if side in ("encoder", "decoder") and parts[1] in ("down", "up"):
            level = int(parts[2]) if side == "encoder" else levels - 1 - int(parts[2])
            group = "down_blocks" if side == "encoder" else "up_blocks"
            if parts[3] == "block":
                tail = ".".join(parts[5:]).replace("nin_shortcut", "conv_shortcut")
                new = f"{side}.{group}.{level}.resnets.{parts[4]}.{tail}"
            elif parts[3] in ("downsample", "upsample"):
                sampler = "downsamplers" if side == "encoder" else "upsamplers"
                new = f"{side}.{group}.{level}.{sampler}.0.{'.'.join(parts[4:])}"
        elif side in ("encoder", "decoder") and parts[1] == "mid":
            if parts[2].startswith("block_"):
                tail = ".".join(parts[3:]).replace("nin_shortcut", "conv_shortcut")
                new = f"{side}.mid_block.resnets.{int(parts[2][6:]) - 1}.{tail}"
            elif parts[2] == "attn_1":
                new = f"{side}.mid_block.attentions.0.{_VAE_ATTN[parts[3]]}.{parts[4]}"
                if value.ndim == 4:
                    value = value[:, :, 0, 0]
        elif side in ("encoder", "decoder") and parts[1] == "norm_out":
            new = f"{side}.conv_norm_out.{parts[2]}"
        out[new] = value
    return out


def taesd_to_diffusers(sd: Mapping[str, object]) -> Tuple[Dict[str, object], float, float]:
    """TAESD tensors (``taesd_encoder.*``, ``taesd_decoder.*``, ``vae_scale``, ``vae_shift``; no prefix) ->
    (diffusers ``AutoencoderTiny`` state dict, vae_scale, vae_shift).

    ComfyUI's TAESD decoder starts with a parameter-free clamp at index 0 that diffusers applies in
    ``forward``, so decoder layer ``i`` is diffusers layer ``i - 1``.
    """
    out = {}
    for name, value in sd.items():
        parts = name.split(".")
        if parts[0] == "taesd_encoder":
            out[".".join(["encoder", "layers", parts[1], *parts[2:]])] = value
        elif parts[0] == "taesd_decoder":
            out[".".join(["decoder", "layers", str(int(parts[1]) - 1), *parts[2:]])] = value
    scale = float(sd["vae_scale"]) if "vae_scale" in sd else 1.0
    shift = float(sd["vae_shift"]) if "vae_shift" in sd else 0.0
    return out, scale, shift


# ---- text encoders --------------------------------------------------------------------------------------
def clip_to_transformers(sd: Mapping[str, object]) -> Dict[str, object]:
    """A CLIP text model in Hugging Face layout (``text_model.*``, or the older layout without that prefix)
    -> ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` state dict (``position_ids`` buffers dropped)."""
    out = {}
    for name, value in sd.items():
        if name.endswith("position_ids") or name == "logit_scale":
            continue
        if not name.startswith(("text_model.", "text_projection.")):
            name = "text_model." + name
        out[name] = value
    return out


def open_clip_to_transformers(sd: Mapping[str, object]) -> Dict[str, object]:
    """OpenCLIP text tower tensors (SDXL's ``conditioner.embedders.1.model.*``, prefix removed) ->
    ``CLIPTextModelWithProjection`` state dict.  The fused ``in_proj`` splits into q, k, v; the
    projection is stored ``[width, proj]`` and used as ``x @ P``, a Linear weight is ``P^T``."""
    out = {}
    for name, value in sd.items():
        if name in ("logit_scale",) or name.endswith("attn_mask"):
            continue
        if name == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif name == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif name.startswith("ln_final."):
            out["text_model.final_layer_norm." + name.split(".", 1)[1]] = value
        elif name == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            parts = name.split(".")
            layer, rest = parts[2], ".".join(parts[3:])
            head = f"text_model.encoder.layers.{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.split("_")[-1]  # weight | bias
                q, k, v = value.chunk(3, dim=0)
                for proj, part in (("q", q), ("k", k), ("v", v)):
                    out[f"{head}self_attn.{proj}_proj.{kind}"] = part.contiguous()
            else:
                rest = (rest.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                        .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
                out[head + rest] = value
        else:
            raise AnyDressingError(f"unexpected OpenCLIP text tensor {name!r}")
    return out


def text_config(sd: Mapping[str, object], kind: str) -> Dict:
    """``CLIPTextConfig`` keyword arguments from converted weights.  ``kind``: ``"clip_l"`` (OpenAI CLIP,
    quick-GELU) or ``"clip_g"`` (OpenCLIP bigG, GELU); heads are 64 channels wide in both."""
    vocab, width = (int(x) for x in sd["text_model.embeddings.token_embedding.weight"].shape)
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    config = {
        "vocab_size": vocab, "hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": width // 64,
        "intermediate_size": int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "max_position_embeddings": int(sd["text_model.embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu" if kind == "clip_l" else "gelu", "layer_norm_eps": 1e-5,
        "bos_token_id": 49406 if vocab == 49408 else 0, "eos_token_id": 49407 if vocab == 49408 else 2,
        "pad_token_id": 49407 if kind == "clip_l" else 0,
    }
    if "text_projection.weight" in sd:
        config["projection_dim"] = int(sd["text_projection.weight"].shape[0])
    return config
