"""A small SDXL-shaped MODEL for in-process tests that need no big checkpoint."""

from __future__ import annotations

import torch

#: the small model's text context width (real SDXL: 2048); its ADM input is SDXL's 2816.
CTX = 128


def small_sdxl_model(host):
    """A ModelPatcher around ComfyUI's own SDXL model class with a 64-channel, two-level UNet (linear
    transformers, depth-2 stacks, ADM 2816) and seeded weights of std 0.02."""
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
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def small_sdxl_conds():
    """``(positive, negative)`` CONDITIONING for the small model: random / zero context and pooled output."""
    gen = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, CTX, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]]
    neg = [[torch.zeros(1, 77, CTX), {"pooled_output": torch.zeros(1, 1280)}]]
    return pos, neg
