"""The trainer's single-file base computes what ComfyUI computes from the same file.

The trainer converts a checkpoint to diffusers / transformers modules without ComfyUI (anydressing_core.single_file);
here each converted piece is compared with ComfyUI's own model loaded from the same tensors: the UNet key map
against ComfyUI's diffusers map (SD1.5, SDXL, Vega-shaped, the tiny test UNet), and the tiny checkpoint's UNet,
CLIP-L, TAESD and a full-size KL VAE numerically.  Also: SDXL's size embedding against ComfyUI's, and the
base fingerprint on a MODEL from Load Checkpoint (with a LoRA: still the same base).
"""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import pytest
import torch

from anydressing_core import base_check, conditioning, ldm_convert as conv, single_file as sf


def _meta_unet_shapes(**config):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def _unet_kwargs(**over):
    base = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_head_channels=-1, num_heads=8,
                context_dim=768, use_linear_in_transformer=False, use_spatial_transformer=True, legacy=False,
                adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False)
    base.update(over)
    return base


SDXL_COMMON = dict(context_dim=2048, adm_in_channels=2816, use_linear_in_transformer=True, num_head_channels=64,
                   num_heads=-1, num_classes="sequential", channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2])
LAYOUTS = {
    "sd15": ("sd15", _unet_kwargs(num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4],
                                   transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)),
    "sdxl": ("sdxl", _unet_kwargs(**SDXL_COMMON, transformer_depth=[0, 0, 2, 2, 10, 10],
                                   transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10)),
    "vega_320": ("sdxl", _unet_kwargs(**{**SDXL_COMMON, "channel_mult": [1, 1, 1]}, transformer_depth=[0, 0, 1, 1, 2, 2],
                                       transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=2)),
}


@pytest.mark.parametrize("name", [*LAYOUTS, "tiny"])
def test_unet_key_map_is_the_inverse_of_comfyuis(host, name):
    import comfy.utils

    tiny = importlib.import_module("devtools.tiny_models")
    base, config = ("sd15", tiny.unet_config("recommended")) if name == "tiny" else LAYOUTS[name]
    shapes = _meta_unet_shapes(**config)
    layout = conv.unet_layout(shapes)
    mine = conv.unet_key_map(layout, list(shapes))
    diffusers_config = conv.unet_config(layout, base)
    from anydressing_core.keys import ldm_unet_config

    comfy_map = comfy.utils.unet_to_diffusers(ldm_unet_config(diffusers_config))  # diffusers -> LDM
    theirs = {}
    for d, ldm in comfy_map.items():  # ComfyUI maps label_emb from class_embedding and add_embedding alike
        if ldm in shapes and not d.startswith("class_embedding."):
            theirs[ldm] = d
    assert len(theirs) == len(shapes), sorted(set(shapes) - set(theirs))[:5]
    wrong = {k: (mine[k], theirs[k]) for k in shapes if mine[k] != theirs[k]}
    assert not wrong, list(wrong.items())[:5]
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(diffusers_config)
    want = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert set(want) == set(mine.values())
    reshaped = [k for k, s in shapes.items() if want[mine[k]] != s]
    assert not reshaped, reshaped[:5]


@pytest.fixture(scope="module")
def tiny_both(host, tiny_models, tiny_model_names):
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    path = tiny_models["checkpoint"]
    unet, base = sf.load_unet(path)
    return SimpleNamespace(model=model, clip=clip, vae=vae, unet=unet, base=base, path=path,
                           codec=sf.load_codec(path, base), text=sf.load_text_encoders(path, base)[0],
                           tokenizer=sf.load_tokenizers(sf.tokenizer_dir(), base)[0])


def test_tiny_checkpoint_unet_clip_and_taesd_match_comfyui(tiny_both):
    t = tiny_both
    assert t.base == "sd15" and t.codec.kind == "taesd"
    text = "a woman wearing a red striped shirt and blue jeans"
    cond = t.clip.encode_from_tokens(t.clip.tokenize(text)).float()
    ids = t.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids[0].tolist() == [tok for tok, _ in t.clip.tokenize(text)["l"][0]]
    with torch.no_grad():
        mine = t.text(ids)[0]
    assert torch.allclose(cond, mine, atol=1e-4), (cond - mine).abs().max()

    pixels = torch.rand(2, 64, 64, 3)
    latent_in = t.model.model.process_latent_in(t.vae.encode(pixels))
    with torch.no_grad():
        z = t.codec.encode(pixels.permute(0, 3, 1, 2) * 2 - 1)
        decoded = ((t.codec.decode(z) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(latent_in, z, atol=1e-6)
    assert torch.allclose(t.vae.decode(t.model.model.process_latent_out(z)), decoded, atol=1e-5)

    x = torch.randn(2, 4, 8, 8)
    steps = torch.tensor([999.0, 10.0])
    with torch.no_grad():
        theirs = t.model.model.diffusion_model(x, steps, context=cond.expand(2, -1, -1))
        ours = t.unet(x, steps, encoder_hidden_states=cond.expand(2, -1, -1)).sample
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


def test_full_size_kl_vae_matches_comfyui(host):
    """A random SD-sized KL VAE (the layout of real checkpoints): encode and decode agree with ComfyUI's."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL as ComfyKL
    from diffusers import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ComfyKL(ddconfig=ddconfig, embed_dim=4).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k in sorted(shapes):
        s = tuple(shapes[k])
        noise = torch.randn(s, generator=gen)
        if len(s) == 1 and k.endswith("weight"):  # every 1-D weight of the VAE is a GroupNorm scale
            sd[k] = 1 + 0.01 * noise
        else:
            sd[k] = noise * (0.5 / math.sqrt(math.prod(s[1:])) if len(s) > 1 else 0.01)
    theirs = comfy.sd.VAE(sd=dict(sd))
    config = conv.vae_config(shapes, 0.18215)
    ours = AutoencoderKL.from_config(config)
    missing, unexpected = ours.load_state_dict(conv.vae_to_diffusers(sd, len(config["block_out_channels"])), strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    codec = sf.LatentCodec(ours.eval(), "kl", 0.18215)
    pixels = torch.rand(1, 64, 64, 3)
    with torch.no_grad():
        z = codec.encode(pixels.permute(0, 3, 1, 2) * 2 - 1)
        back = ((codec.decode(z) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    raw = theirs.encode(pixels)
    assert torch.allclose(raw * 0.18215, z, atol=1e-4), (raw * 0.18215 - z).abs().max()
    assert torch.allclose(theirs.decode(raw), back, atol=1e-4)


def test_sdxl_size_embedding_equals_comfyuis_encode_adm():
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
    from comfy.model_base import SDXL

    pooled = torch.randn(2, 1280)
    fake = SimpleNamespace(embedder=Timestep(256), noise_augmentor=None)
    theirs = SDXL.encode_adm(fake, pooled_output=pooled, width=1216, height=832, crop_w=16, crop_h=8,
                             target_width=1024, target_height=1024)
    ids = conditioning.time_ids(832, 1216, crop=(8, 16), target=(1024, 1024), batch=2)
    assert torch.allclose(conditioning.adm_vector(pooled, ids), theirs, atol=1e-5)


def test_fingerprint_of_the_file_matches_its_model_also_with_a_lora(host, tiny_both, tiny_model_names):
    import comfy.model_management

    t = tiny_both
    meta = SimpleNamespace(base_fingerprint=base_check.fingerprint(base_check.diffusers_norms(t.unet)),
                           base_checkpoint={"file": t.path.name})
    assert base_check.base_warning(meta, t.model.model.diffusion_model.state_dict()) is None
    lora_model, _ = host.run("LoraLoader", model=t.model, clip=t.clip, lora_name=tiny_model_names["lora"],
                             strength_model=1.0, strength_clip=1.0)
    comfy.model_management.load_models_gpu([lora_model])  # the LoRA is now patched into the weights
    assert base_check.base_warning(meta, lora_model.model.diffusion_model.state_dict()) is None
    other = t.model.clone()
    key = "diffusion_model.middle_block.1.transformer_blocks.0.norm2.weight"
    other.add_patches({key: (torch.full_like(other.get_model_object(key), 0.01),)}, 1.0)
    comfy.model_management.load_models_gpu([other])
    msg = base_check.base_warning(meta, other.model.diffusion_model.state_dict())
    assert msg and "8 of" in msg and t.path.name in msg
    comfy.model_management.load_models_gpu([t.model])  # leave the shared UNet unpatched for other tests


@pytest.mark.slow  # the tiny SDXL file carries the real 695 M OpenCLIP bigG
def test_tiny_sdxl_checkpoint_text_size_embedding_and_unet_match_comfyui(host, tiny_sdxl, sdxl_checkpoint):
    from anydressing_core.train.components import load_components

    model, clip, vae = sdxl_checkpoint
    comp = load_components(str(tiny_sdxl["checkpoint"]), str(host.path / "comfy" / "sd1_tokenizer"))
    assert comp.base == "sdxl" and comp.codec.kind == "taesd"
    text = "a woman wearing a red top"
    context, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    mine = comp.encode_text([text], "cpu")
    assert torch.allclose(context.float(), mine.context, atol=1e-4), (context.float() - mine.context).abs().max()
    assert torch.allclose(pooled.float(), mine.pooled, atol=1e-4)
    pixels = torch.rand(1, 64, 64, 3)
    with torch.no_grad():
        z = comp.codec.encode(pixels.permute(0, 3, 1, 2) * 2 - 1)
    assert torch.allclose(model.model.process_latent_in(vae.encode(pixels)), z, atol=1e-6)
    x, steps = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    y = model.model.encode_adm(pooled_output=pooled.float(), width=64, height=64, crop_w=0, crop_h=0,
                               target_width=64, target_height=64)
    with torch.no_grad():
        theirs = model.model.diffusion_model(x, steps, context=context.float(), y=y.float())
        ours = comp.unet(x, steps, encoder_hidden_states=mine.context,
                         added_cond_kwargs=comp.added_cond(mine, (64, 64))).sample
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()
