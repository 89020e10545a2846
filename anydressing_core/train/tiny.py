"""Tiny random SD1.5-shaped components and a tiny manifest dataset, for tests and smoke runs.

    python -m anydressing_core.train.tiny OUT   # writes OUT/model (diffusers folder) and OUT/data

Nothing is downloaded: every model is built from a config with seeded random weights, and the
tokenizer is a character-level CLIP tokenizer written from scratch.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from ..single_file import LatentCodec
from .components import SD15_SCHEDULE, Components

TEXT_DIM = 16


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8)


def tiny_vae():
    """Downsamples by 4 (three levels), so 32x32 images give 8x8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=4, sample_size=32)


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1))


def write_tokenizer(folder: Path):
    """A character-level CLIP tokenizer (letters only, max 16 tokens)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    tok.save_pretrained(str(folder))
    return tok


def tiny_components(folder: Path) -> Components:
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    vae = tiny_vae()
    return Components(tiny_unet(), LatentCodec(vae, "kl", vae.config.scaling_factor), [tiny_text_encoder()],
                      [write_tokenizer(Path(folder) / "tokenizer")],
                      DDPMScheduler(**{k: v for k, v in SD15_SCHEDULE.items() if k != "set_alpha_to_one"}))


def write_model(folder) -> Path:
    """A diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) with seeded random weights."""
    folder = Path(folder)
    c = tiny_components(folder)
    c.unet.save_pretrained(str(folder / "unet"))
    c.vae.save_pretrained(str(folder / "vae"))
    c.text_encoders[0].save_pretrained(str(folder / "text_encoder"))
    c.scheduler.save_pretrained(str(folder / "scheduler"))
    return folder


def write_dataset(folder, count: int = 8, size: int = 32, seed: int = 0) -> Path:
    """``count`` mannequins wearing an upper (and every other one a lower) garment; returns the manifest."""
    folder = Path(folder)
    for sub in ("persons", "garments", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        person = np.full((size, size, 3), 255, np.uint8)
        rec = {"person": f"persons/{i:03d}.png", "caption": "a person wearing a top", "garments": []}
        boxes = {"upper": (size // 8, size // 2, size // 4, 3 * size // 4)}
        if i % 2 == 0:
            boxes["lower"] = (size // 2, 7 * size // 8, size // 4, 3 * size // 4)
        for slot, (y0, y1, x0, x1) in boxes.items():
            colour = rng.integers(0, 255, size=3).astype(np.uint8)
            tex = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            tex[:] = colour
            tex[::3] = 255 - colour  # stripes: texture with edges
            person[y0:y1, x0:x1] = tex
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y1, x0:x1] = 255
            garment = np.full((size, size, 3), 255, np.uint8)
            gmask = np.zeros((size, size), np.uint8)
            gy, gx = (size - (y1 - y0)) // 2, (size - (x1 - x0)) // 2
            garment[gy:gy + y1 - y0, gx:gx + x1 - x0] = tex
            gmask[gy:gy + y1 - y0, gx:gx + x1 - x0] = 255
            stem = f"{i:03d}_{slot}"
            cv2.imwrite(str(folder / "garments" / f"{stem}.png"), garment[..., ::-1])
            cv2.imwrite(str(folder / "garments" / f"{stem}_mask.png"), gmask)
            cv2.imwrite(str(folder / "masks" / f"{stem}.png"), mask)
            rec["garments"].append({"slot": slot, "image": f"garments/{stem}.png", "mask": f"masks/{stem}.png",
                                    "garment_mask": f"garments/{stem}_mask.png"})
        cv2.imwrite(str(folder / "persons" / f"{i:03d}.png"), person[..., ::-1])
        lines.append(json.dumps(rec))
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def tiny_overrides(out_dir, model_dir, manifest) -> list:
    """Config overrides for a seconds-long CPU run on the tiny model and data."""
    return [f"model.base={model_dir}", "model.slots=[upper, lower]", "model.lora_rank=4", "model.lora_alpha=4",
            f"dataset.path={manifest}", "data.height=32", "data.width=32", "data.garment_height=32",
            "data.garment_width=32", "loss.dists_random_weights=true", "loss.gtl_max_t=500",
            f"run.output_dir={out_dir}", "run.batch_size=2", "run.num_workers=0", "run.log_every=1",
            "run.sample_every=0", "run.sample_steps=2", "run.progress=false", "optim.lr=1e-3"]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny")
    print(write_model(out / "model"), write_dataset(out / "data"))
