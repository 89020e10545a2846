"""Memory per GPU of a training run, ESTIMATED from parameter counts (nothing is measured here).

    python -m anydressing_core.train.estimate --base sdxl --processes 8

Counts come from the real modules built on the meta device (no memory, no weights): the full-size SD1.5 or SDXL
UNet as DressingNet, the trainable module of :class:`.model.DressingTrainModel` (GarmentsNet, GFE LoRA, Wk'/Wv'),
CLIP text encoder(s) and the KL VAE.  Per GPU, for DDP and FSDP:

* trainable state: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes per trainable parameter);
  the module's frozen tensors (GarmentsNet's attn1 q/k/v/out under the LoRA, its removed attn2) in fp32.  FSDP
  divides all of it by the process count;
* FSDP's gathered units: the root unit (stem, LoRA, Wk'/Wv') for the whole step, plus the largest GarmentsNet
  block while it runs (weights, and gradients of its trainable part);
* frozen, replicated: DressingNet, text encoder(s), VAE in bf16.

Activations are NOT counted (they depend on resolution, garments, batch and checkpointing).
"""

from __future__ import annotations

import argparse
import json
from typing import Dict

import torch

GB = 1e9

UNET = {
    "sd15": dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, attention_head_dim=8),
    "sdxl": dict(block_out_channels=[320, 640, 1280], layers_per_block=2, cross_attention_dim=2048,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, attention_head_dim=[5, 10, 20],
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
#: CLIP-L (SD1.5, SDXL's first encoder) and OpenCLIP ViT-bigG (SDXL's second): the released encoders' shapes.
TEXT = {
    "clip_l": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "clip_g": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280),
}


def _count(module, trainable=None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def counts(base: str, slots=("upper", "lower", "hat"), rank: int = 64) -> Dict[str, int]:
    """Parameter counts of every piece of a run on ``base`` (``sd15`` / ``sdxl``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .config import ModelConfig
    from .model import DressingTrainModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET[base])
        model = DressingTrainModel.from_config(unet, ModelConfig(slots=list(slots), lora_rank=rank))
        encoders = [CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **TEXT["clip_l"]))]
        if base == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                                                       **TEXT["clip_g"])))
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    gnet = model.garments.unet
    blocks = [b for b in [*gnet.down_blocks, gnet.mid_block, *gnet.up_blocks] if b is not None]
    largest = max(blocks, key=_count)
    in_blocks = sum(_count(b) for b in blocks)
    return {
        "dressing_net": _count(unet), "module": _count(model), "trainable": _count(model, True),
        "garments_net_trainable": _count(gnet, True), "gfe_lora": _count(model.garments.gfe), "da": _count(model.da),
        "root_unit": _count(model) - in_blocks, "largest_block": _count(largest),
        "largest_block_trainable": _count(largest, True), "text_encoders": sum(_count(e) for e in encoders),
        "vae": _count(vae), "da_layers": len(model.da.keys),
    }


def memory(params: Dict[str, int], processes: int, strategy: str) -> Dict[str, float]:
    """GB per GPU (see the module docstring for what is in each line)."""
    p = processes if strategy == "fsdp" else 1
    frozen_in_module = params["module"] - params["trainable"]
    out = {
        "trainable weights+grads+AdamW (fp32)": 16 * params["trainable"] / p / GB,
        "frozen GarmentsNet tensors (fp32)": 4 * frozen_in_module / p / GB,
        "DressingNet + text encoders + VAE (bf16, replicated)": 2 * (params["dressing_net"] + params["text_encoders"] + params["vae"]) / GB,
    }
    if strategy == "fsdp":
        out["gathered root unit (weights + grads, fp32)"] = 8 * params["root_unit"] / GB
        out["gathered largest block (weights + grads, fp32)"] = (4 * params["largest_block"]
                                                                 + 4 * params["largest_block_trainable"]) / GB
    out["total before activations"] = sum(out.values())
    return {k: round(v, 2) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m anydressing_core.train.estimate", description=__doc__.split("\n")[0])
    ap.add_argument("--base", choices=sorted(UNET), default="sdxl")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--slots", default="upper,lower,hat,dress")
    ap.add_argument("--rank", type=int, default=64)
    args = ap.parse_args(argv)
    params = counts(args.base, args.slots.split(","), args.rank)
    layers = params.pop("da_layers")
    report = {"base": args.base, "processes": args.processes, "da_layers": layers,
              "parameters_millions": {k: round(v / 1e6, 1) for k, v in params.items()},
              "GB_per_gpu_ESTIMATE": {s: memory(params, args.processes, s) for s in ("ddp", "fsdp")}}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
