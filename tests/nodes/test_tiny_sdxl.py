"""The tiny SDXL-family files load through ComfyUI's stock loader nodes as SDXL, and sample."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

pytestmark = pytest.mark.slow  # a 1.2 GB checkpoint with the real CLIP-G: ~30 s on 2 cores


@pytest.fixture(scope="module")
def prompts(host, sdxl_checkpoint):
    """``(positive, negative, empty)`` CONDITIONING, encoded once (CLIP-G in fp16 is slow on the CPU)."""
    clip = sdxl_checkpoint[1]
    return tuple(host.run("CLIPTextEncode", clip=clip, text=text)[0]
                 for text in ("a person wearing a red t-shirt", "lowres", ""))


def sample(host, model, positive, negative, seed=1, steps=2):
    (latent,) = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = host.run("KSampler", model=model, seed=seed, steps=steps, cfg=6.0, sampler_name="ddim",
                      scheduler="ddim_uniform", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    return out["samples"]


def test_checkpoint_is_detected_as_an_sdxl_model(host, sdxl_checkpoint):
    import comfy.supported_models

    model, clip, vae = sdxl_checkpoint
    config = model.model.model_config
    assert isinstance(config, comfy.supported_models.SDXL), type(config).__name__
    cfg = config.unet_config
    assert (cfg["model_channels"], cfg["context_dim"], cfg["adm_in_channels"]) == (320, 2048, 2816)
    assert type(model.model.latent_format).__name__ == "SDXL"
    keys = set(host.module("nodes.common").attn1_modules(model.model.diffusion_model))
    assert ("middle", 0, 1) in keys and ("output", 0, 1) in keys and len(keys) == 17
    assert abs(float(vae.first_stage_model.vae_scale.detach()) - importlib.import_module("devtools.tiny_models").TAESDXL_SCALE) < 1e-4


def test_text_encoders_give_sdxl_conditioning(prompts):
    cond, _, empty = prompts
    assert cond[0][0].shape == (1, 77, 2048) and torch.isfinite(cond[0][0]).all()
    pooled = cond[0][1]["pooled_output"]
    assert pooled.shape == (1, 1280) and torch.isfinite(pooled).all()
    assert not torch.equal(pooled, empty[0][1]["pooled_output"])  # CLIP-G really reads the text


def test_two_step_sample_is_finite_and_seeded(host, sdxl_checkpoint, prompts):
    model, clip, vae = sdxl_checkpoint
    pos, neg, _ = prompts
    first, again = sample(host, model, pos, neg), sample(host, model, pos, neg)
    assert first.shape == (1, 4, 8, 8) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    (decoded,) = host.run("VAEDecode", samples={"samples": first}, vae=vae)
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all()


def test_controlnet_and_lora_load_and_change_the_sample(host, sdxl_checkpoint, prompts, tiny_sdxl_names, caplog):
    import comfy.controlnet

    model, clip, vae = sdxl_checkpoint
    pos, neg, _ = prompts
    plain = sample(host, model, pos, neg, steps=1)
    (control,) = host.run("ControlNetLoader", control_net_name=tiny_sdxl_names["controlnet"])
    assert isinstance(control, comfy.controlnet.ControlNet)
    pos2, neg2 = host.run("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=control,
                          image=torch.rand(1, 64, 64, 3), strength=1.0, start_percent=0.0, end_percent=1.0, vae=vae)
    controlled = sample(host, model, pos2, neg2, steps=1)
    assert torch.isfinite(controlled).all() and not torch.equal(controlled, plain)
    with caplog.at_level(logging.WARNING):
        patched, _ = host.run("LoraLoader", model=model, clip=clip, lora_name=tiny_sdxl_names["lora"],
                              strength_model=1.0, strength_clip=0.0)
    assert "not loaded" not in caplog.text.lower(), caplog.text
    assert len(patched.patches) == 17 * 8  # q/k/v/out of attn1 and attn2 in all 17 transformer blocks
    with_lora = sample(host, patched, pos, neg, steps=1)
    assert not torch.equal(with_lora, plain)
    assert torch.equal(sample(host, model, pos, neg, steps=1), plain)  # the plain MODEL was not touched


def test_built_once_per_builder_version(host, tiny_sdxl, tmp_path):
    """A second call reuses the files (no rewrite); the cache folder names the builder version."""
    tiny = importlib.import_module("devtools.tiny_models")
    stamp = tiny_sdxl["folder"] / "built.json"
    before = (stamp.stat().st_mtime_ns, tiny_sdxl["checkpoint"].stat().st_mtime_ns)
    again = tiny.ensure_tiny_sdxl_models(tiny_sdxl["folder"].parent)
    assert again == tiny_sdxl
    assert (stamp.stat().st_mtime_ns, tiny_sdxl["checkpoint"].stat().st_mtime_ns) == before
    assert tiny_sdxl["folder"].name == f"sdxl-v{tiny.SDXL_BUILDER_VERSION}-s0"
