"""Small graph-building helpers for in-process node tests."""

from __future__ import annotations

import copy

import numpy as np
import torch


def garment_image(color, size=(64, 48), pattern="plain", seed=0) -> torch.Tensor:
    """A garment-like IMAGE ``[1, H, W, 3]``: a coloured shape on white, optionally striped."""
    h, w = size
    img = np.ones((h, w, 3), dtype=np.float32)
    y0, y1, x0, x1 = h // 8, h - h // 8, w // 6, w - w // 6
    img[y0:y1, x0:x1] = np.asarray(color, dtype=np.float32)
    if pattern == "stripes":
        img[y0:y1:4, x0:x1] = 0.1
    elif pattern == "noise":
        rng = np.random.default_rng(seed)
        img[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0, 3), dtype=np.float32)
    return torch.from_numpy(img)[None]


class Graph:
    """Runs the stock nodes around AnyDressing on the tiny checkpoint."""

    def __init__(self, host, names):
        self.host = host
        self.names = names
        self.model, self.clip, self.vae = host.run("CheckpointLoaderSimple", ckpt_name=names["checkpoint"])
        self.pos = self.encode("a person wearing a shirt")
        self.neg = self.encode("")

    def encode(self, text):
        return self.host.run("CLIPTextEncode", clip=self.clip, text=text)[0]

    def garments(self, specs):
        chain = None
        for color, slot, *rest in specs:
            pattern = rest[0] if rest else "plain"
            kw = {} if chain is None else {"garments": chain}
            chain = self.host.run("AnyDressingGarment", image=garment_image(color, pattern=pattern), slot=slot,
                                  weight=1.0, **kw)[0]
        return chain

    def features(self, specs, model=None, size=64):
        return self.host.run("AnyDressingEncodeGarments", model=model or self.model, vae=self.vae,
                             garments=self.garments(specs), width=size, height=size)[0]

    def apply(self, features, model=None, **kw):
        args = dict(strength=0.7, start_percent=0.0, end_percent=1.0, form="auto",
                    cfg_policy="garments in positive only (paper)")
        args.update(kw)
        return self.host.run("AnyDressingApply", model=model or self.model, features=features, **args)[0]

    def sample(self, model, seed=0, steps=2, cfg=6.0, size=64, positive=None, negative=None):
        latent = self.host.run("EmptyLatentImage", width=size, height=size, batch_size=1)[0]
        out = self.host.run("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="ddim",
                            scheduler="ddim_uniform", positive=positive or self.pos, negative=negative or self.neg,
                            latent_image=latent, denoise=1.0)[0]
        return out["samples"]


# The diffusers twin of devtools/tiny_models.py's "recommended" preset (model_channels 320, 2 levels, 7 blocks).
TINY_DIFFUSERS = dict(block_out_channels=(320, 320), layers_per_block=1,
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                      attention_head_dim=8, sample_size=8)


def diffusers_unet_from_comfy(host, model):
    """A diffusers UNet holding exactly the ComfyUI MODEL's weights (ComfyUI's own key map)."""
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)  # diffusers -> LDM
    ldm = model.model.diffusion_model.state_dict()
    import diffusers

    unet = diffusers.UNet2DConditionModel(**TINY_DIFFUSERS)
    missing, unexpected = unet.load_state_dict({d: ldm[l].float() for d, l in mapping.items() if l in ldm}, strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    return unet.eval()


def make_adapter(host, unet, seed=0, include_unet=True, slots=("upper", "lower")):
    """A 'trained' adapter: GarmentsNet != base, non-zero GFE LoRA, Wk'/Wv' != Wk/Wv."""
    core = host.module("anydressing_core.diffusers_model")
    ckpt = host.module("anydressing_core.checkpoint")
    g = torch.Generator().manual_seed(seed)
    gnet = core.build_garments_net(copy.deepcopy(unet), slots=list(slots), rank=4, alpha=8)
    da = core.install_dressing_attention(copy.deepcopy(unet), projections="copy")
    with torch.no_grad():
        for p in gnet.gfe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for name, p in gnet.unet.named_parameters():
            if name.endswith("attn1.to_v.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        for p in da.projections.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return ckpt.export(gnet, da, include_unet=include_unet, provenance={"test": "tiny"}), gnet, da


class CountingAttention:
    """A stand-in for another pack's attention patch (IP-Adapter/FaceID on attn2, or a foreign attn1 replace):
    plain attention that counts its calls, so a test can see it was still called."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention
        self.calls += 1
        return optimized_attention(q, k, v, extra_options["n_heads"])

    def __deepcopy__(self, memo):
        return self
