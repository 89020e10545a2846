"""The tiny random model files load through ComfyUI's real loader nodes as the right model types."""

from __future__ import annotations

import logging

import pytest
import torch


@pytest.fixture(scope="module")
def loaded(host, tiny_model_names):
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    return model, clip, vae


def test_checkpoint_is_detected_as_sd15(loaded):
    model, clip, vae = loaded
    assert type(model.model.model_config).__name__ == "SD15"
    cfg = model.model.model_config.unet_config
    assert cfg["model_channels"] == 320 and cfg["context_dim"] == 768 and cfg["in_channels"] == 4
    assert clip is not None and vae is not None


def test_checkpoint_has_sd15_transformer_keys(host, loaded):
    """Dressing-Attention keys come from the model: the tiny one has input, middle and output blocks."""
    model = loaded[0]
    names = {name.split(".")[0] for name, m in model.model.diffusion_model.named_modules()
             if name.endswith("attn1")}
    assert names == {"input_blocks", "middle_block", "output_blocks"}


def test_text_encoder_and_taesd_vae_work(host, loaded):
    model, clip, vae = loaded
    (cond,) = host.run("CLIPTextEncode", clip=clip, text="a person wearing a red t-shirt")
    assert cond[0][0].shape == (1, 77, 768) and torch.isfinite(cond[0][0]).all()
    image = torch.rand(1, 64, 64, 3)
    (latent,) = host.run("VAEEncode", pixels=image, vae=vae)
    assert latent["samples"].shape == (1, 4, 8, 8)
    (decoded,) = host.run("VAEDecode", samples=latent, vae=vae)
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all()


def test_two_step_sample_is_finite(host, loaded):
    model, clip, vae = loaded
    (pos,) = host.run("CLIPTextEncode", clip=clip, text="a hat")
    (neg,) = host.run("CLIPTextEncode", clip=clip, text="")
    (latent,) = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = host.run("KSampler", model=model, seed=1, steps=2, cfg=6.0, sampler_name="ddim",
                      scheduler="ddim_uniform", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    assert torch.isfinite(out["samples"]).all()


def test_controlnet_loads_and_applies(host, loaded, tiny_model_names):
    import comfy.controlnet

    (control,) = host.run("ControlNetLoader", control_net_name=tiny_model_names["controlnet"])
    assert isinstance(control, comfy.controlnet.ControlNet)
    assert type(control.control_model).__name__ == "ControlNet"
    model, clip, vae = loaded
    (pos,) = host.run("CLIPTextEncode", clip=clip, text="a person")
    (neg,) = host.run("CLIPTextEncode", clip=clip, text="")
    pos2, neg2 = host.run("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=control,
                          image=torch.rand(1, 64, 64, 3), strength=1.0, start_percent=0.0, end_percent=1.0,
                          vae=vae)
    (latent,) = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = host.run("KSampler", model=model, seed=1, steps=2, cfg=6.0, sampler_name="ddim",
                      scheduler="ddim_uniform", positive=pos2, negative=neg2, latent_image=latent, denoise=1.0)
    assert torch.isfinite(out["samples"]).all()


def test_lora_patches_every_unet_attention_weight(host, loaded, tiny_model_names, caplog):
    from devtools import tiny_models as tiny
    model, clip, _ = loaded
    with caplog.at_level(logging.WARNING):
        patched, _clip = host.run("LoraLoader", model=model, clip=clip, lora_name=tiny_model_names["lora"],
                                  strength_model=1.0, strength_clip=1.0)
    assert "not loaded" not in caplog.text.lower(), caplog.text
    targets = set(tiny.lora_targets())
    assert set(patched.patches) == targets
    import comfy.model_management as mm

    key = sorted(targets)[0]
    before = model.model.state_dict()[key].clone()
    # The way samplers do it: loading the LoRA patcher unloads the plain one and patches the shared weights.
    mm.load_models_gpu([patched], force_full_load=True)
    after = patched.model.state_dict()[key].clone()
    mm.load_models_gpu([model], force_full_load=True)
    assert after.shape == before.shape
    assert not torch.equal(after, before), "LoraLoader left the UNet weight unchanged"
    assert torch.equal(model.model.state_dict()[key], before), "reloading the plain model did not restore it"


def test_lora_changes_the_sample(host, loaded, tiny_model_names):
    model, clip, _ = loaded
    patched, _ = host.run("LoraLoader", model=model, clip=clip, lora_name=tiny_model_names["lora"],
                          strength_model=1.0, strength_clip=0.0)
    (pos,) = host.run("CLIPTextEncode", clip=clip, text="a hat")
    (neg,) = host.run("CLIPTextEncode", clip=clip, text="")
    (latent,) = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    kw = dict(seed=3, steps=2, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform", positive=pos,
              negative=neg, latent_image=latent, denoise=1.0)
    (plain,) = host.run("KSampler", model=model, **kw)
    (with_lora,) = host.run("KSampler", model=patched, **kw)
    (plain_again,) = host.run("KSampler", model=model, **kw)
    assert torch.equal(plain["samples"], plain_again["samples"])
    assert not torch.equal(plain["samples"], with_lora["samples"])
