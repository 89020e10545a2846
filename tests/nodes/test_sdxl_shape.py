"""Block keys come from the model: an SDXL-shaped UNet (linear transformers, ADM, depth-2 stacks) works
in zero-shot with no SD1.5 list anywhere."""

from __future__ import annotations

import pytest
import torch

from helpers import Graph

CTX = 128


@pytest.fixture(scope="module")
def sdxl_like(host):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = dict(in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1, 1], channel_mult=[1, 2],
               transformer_depth=[0, 2], transformer_depth_output=[0, 0, 2, 2], transformer_depth_middle=1,
               context_dim=CTX, adm_in_channels=2816, num_head_channels=32, use_linear_in_transformer=True,
               image_size=32, use_temporal_attention=False, use_temporal_resblock=False, num_classes="sequential",
               use_spatial_transformer=True, legacy=False, dims=2)
    config = comfy.supported_models.SDXL(cfg)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def test_sdxl_shaped_unet_zero_shot(host, tiny_model_names, sdxl_like):
    g = Graph(host, tiny_model_names)  # only for its 4-channel VAE and the stock nodes
    keys = set(host.module("nodes.common").attn1_modules(sdxl_like.model.diffusion_model))
    assert ("input", 3, 1) in keys and ("output", 0, 1) in keys  # depth-2 stacks: transformer_index 1 exists
    feats = g.features([((0.9, 0.1, 0.1), "upper"), ((0.1, 0.1, 0.9), "lower")], model=sdxl_like)
    assert set(feats.tokens) == keys
    gen = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, CTX, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]]
    neg = [[torch.zeros(1, 77, CTX), {"pooled_output": torch.zeros(1, 1280)}]]
    plain = g.sample(sdxl_like, positive=pos, negative=neg)
    patched = g.apply(feats, model=sdxl_like)
    dressed = g.sample(patched, positive=pos, negative=neg)
    zero = g.sample(g.apply(feats, model=sdxl_like, strength=0.0), positive=pos, negative=neg)
    # small random weights (std 0.02) make every attention nearly uniform, so the change is small but real
    assert torch.isfinite(dressed).all() and not torch.equal(dressed, plain)
    assert host.module("nodes.patch").find_patch(patched).calls >= 2 * len(keys)
    assert torch.equal(zero, plain)
    # features of an SD1.5 model do not fit this one: a clear error, not a shape crash mid-sampling
    sd15_feats = g.features([((0.9, 0.1, 0.1), "upper")])
    with pytest.raises(ValueError, match="encoded with SD1.5, but the MODEL is SDXL"):
        g.apply(sd15_feats, model=sdxl_like)
