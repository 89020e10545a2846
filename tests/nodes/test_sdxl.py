"""SDXL as a base, in-process: the garment pass's ADM conditioning, the garment-token budget, and zero-shot
dressing on the tiny SDXL checkpoint through the stock loaders with region masks, attention maps, LoRA,
ControlNet and KSampler (those tests load the 1.2 GB checkpoint: slow tier)."""

from __future__ import annotations

import pytest
import torch

from helpers import Graph
from sdxl_helpers import small_sdxl_conds, small_sdxl_model

RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9), (0.1, 0.8, 0.2)
PAPER = "garments in positive only (paper)"


class SDXLGraph(Graph):
    """Graph around the tiny SDXL checkpoint (its CLIP, VAE, MODEL from CheckpointLoaderSimple)."""

    def __init__(self, host, names, loaded):
        self.host, self.names = host, names
        self.model, self.clip, self.vae = loaded
        self.pos = self.encode("a person wearing a shirt")
        self.neg = self.encode("")

    def features(self, specs, model=None, size=64, height=None, clip="own"):
        kw = {} if clip is None else {"clip": self.clip if clip == "own" else clip}
        return self.host.run("AnyDressingEncodeGarments", model=model or self.model, vae=self.vae,
                             garments=self.garments(specs), width=size, height=height or size, **kw)[0]


class AdmSpy:
    """Records the ADM vector ``y`` of every UNet forward (the garment pass is the only one here)."""

    def __init__(self, diffusion_model):
        self.seen = []
        self.handle = diffusion_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.seen.append(kwargs["y"].detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def xl(host, tiny_sdxl_names, sdxl_checkpoint):
    return SDXLGraph(host, tiny_sdxl_names, sdxl_checkpoint)


def comfy_adm(model, pooled, width, height):
    """What ComfyUI's own conditioning gives the UNet for a prompt with this pooled output at this size."""
    return model.model.encode_adm(pooled_output=pooled, width=width, height=height)


@pytest.mark.slow
def test_garment_pass_gets_the_empty_prompts_pooled_and_size_embeddings(host, xl):
    (empty,) = host.run("CLIPTextEncode", clip=xl.clip, text="")
    pooled = empty[0][1]["pooled_output"]
    with AdmSpy(xl.model.model.diffusion_model) as spy:
        xl.features([(RED, "upper"), (BLUE, "lower")], size=64, height=128)
    (y,) = spy.seen
    assert y.shape == (2, 2816)
    want = comfy_adm(xl.model, pooled, 64, 128)  # as CLIPTextEncode("") + KSampler would build it at 64x128
    assert torch.equal(y[0:1].float(), want.float()) and torch.equal(y[0], y[1])
    assert not torch.equal(y, comfy_adm(xl.model, pooled, 128, 64).expand(2, -1).to(y))  # the size matters
    with AdmSpy(xl.model.model.diffusion_model) as spy:
        xl.features([(RED, "upper")], size=64, height=128, clip=None)
    (no_clip,) = spy.seen
    assert torch.equal(no_clip[:, :1280], torch.zeros(1, 1280, dtype=no_clip.dtype))  # zero pooled without a CLIP
    assert torch.equal(no_clip[:, 1280:], y[:1, 1280:])  # the size embeddings stay


@pytest.mark.slow
def test_zero_shot_on_sdxl_dresses_and_strength_zero_is_the_plain_model(host, xl):
    feats = xl.features([(RED, "upper"), (BLUE, "lower", "stripes")])
    assert feats.base == "sdxl" and feats.latent_hw == (8, 8)
    plain = xl.sample(xl.model, steps=2)
    patched = xl.apply(feats)
    dressed = xl.sample(patched, steps=2)
    assert torch.isfinite(dressed).all() and not torch.equal(dressed, plain)
    assert host.module("nodes.patch").find_patch(patched).calls >= 2 * len(feats.tokens)
    assert torch.equal(xl.sample(xl.apply(feats, strength=0.0), steps=2), plain)


@pytest.mark.slow
def test_region_masks_and_attention_maps_on_sdxl(host, xl):
    feats = xl.features([(RED, "upper"), (BLUE, "lower")])
    free = xl.sample(xl.apply(feats), steps=1)
    masks = torch.zeros(2, 64, 64)
    masks[0, :32], masks[1, 32:] = 1.0, 1.0
    regional = xl.apply(feats, region_masks=masks)
    assert not torch.equal(xl.sample(regional, steps=1), free)
    (latent,) = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    picture, maps = host.run("AnyDressingAttentionMaps", model=regional, positive=xl.pos, latent=latent,
                             at_percent=0.5, seed=0)
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    # with regions, each garment's map is larger inside its own region than in the other's
    assert maps[0, :32].mean() > maps[0, 32:].mean() and maps[1, 32:].mean() > maps[1, :32].mean()


@pytest.mark.slow
def test_lora_and_controlnet_stack_with_dressing_on_sdxl(host, xl, tiny_sdxl_names):
    feats = xl.features([(RED, "upper")])
    lora, _ = host.run("LoraLoader", model=xl.model, clip=xl.clip, lora_name=tiny_sdxl_names["lora"],
                       strength_model=1.0, strength_clip=0.0)
    (control,) = host.run("ControlNetLoader", control_net_name=tiny_sdxl_names["controlnet"])
    pos, neg = host.run("ControlNetApplyAdvanced", positive=xl.pos, negative=xl.neg, control_net=control,
                        image=torch.rand(1, 64, 64, 3), strength=1.0, start_percent=0.0, end_percent=1.0, vae=xl.vae)
    both = xl.apply(feats, model=lora)
    undressed = xl.sample(lora, steps=1, positive=pos, negative=neg)
    dressed = xl.sample(both, steps=1, positive=pos, negative=neg)
    assert torch.isfinite(dressed).all() and not torch.equal(dressed, undressed)
    shared = host.module("nodes.patch").find_patch(both)
    assert shared.calls > 0
    assert torch.equal(xl.sample(xl.apply(feats, model=lora, strength=0.0), steps=1, positive=pos, negative=neg),
                       undressed)


@pytest.mark.slow
def test_portrait_832x1216_with_a_token_budget(host, xl):
    """The SDXL portrait size, garments at 768x1024: a budget of 4096 pools the first attention level of two
    garments (2 x 48x64 tokens) 2x2 and leaves the deeper level (2 x 24x32) whole."""
    feats = xl.features([(RED, "upper"), (BLUE, "lower")], size=768, height=1024)
    patched = xl.apply(feats, garment_token_budget=4096)
    used = host.module("nodes.patch").find_patch(patched).features
    sizes = {k: (feats.tokens[k].shape[1], used.tokens[k].shape[1]) for k in feats.tokens}
    assert {a for a, b in sizes.values()} == {3072, 768}
    assert all(b == a // 4 if a == 3072 else b == a for a, b in sizes.values()), sizes
    (latent,) = host.run("EmptyLatentImage", width=832, height=1216, batch_size=1)
    (result,) = host.run("KSampler", model=patched, seed=0, steps=1, cfg=6.0, sampler_name="ddim",
                         scheduler="ddim_uniform", positive=xl.pos, negative=xl.neg, latent_image=latent, denoise=1.0)
    assert result["samples"].shape == (1, 4, 152, 104) and torch.isfinite(result["samples"]).all()


# ---- without the big checkpoint: a small SDXL-shaped UNet (ComfyUI's SDXL model class), SD1.5's VAE and nodes

@pytest.fixture(scope="module")
def small_xl(host):
    return small_sdxl_model(host)


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


def test_small_sdxl_model_is_named_sdxl_and_sd15_is_sd15(host, small_xl, g):
    base = host.module("nodes.common").model_base
    assert base(small_xl) == "sdxl" and base(g.model) == "sd15"


def test_without_clip_the_garment_pass_gets_size_embeddings_not_zeros(host, small_xl, g):
    with AdmSpy(small_xl.model.diffusion_model) as spy:
        g.features([(RED, "upper")], model=small_xl, size=64)
        g.host.run("AnyDressingEncodeGarments", model=small_xl, vae=g.vae, garments=g.garments([(RED, "upper")]),
                   width=128, height=64)
    square, wide = spy.seen
    assert torch.equal(square[:, :1280], torch.zeros_like(square[:, :1280]))
    assert square[:, 1280:].abs().sum() > 0 and not torch.equal(square, wide)
    want = small_xl.model.encode_adm(pooled_output=torch.zeros(1, 1280), width=64, height=64)
    assert torch.equal(square.float(), want.float())


def test_sd15_model_ignores_a_connected_clip(host, g):
    with_clip = host.run("AnyDressingEncodeGarments", model=g.model, vae=g.vae, garments=g.garments([(RED, "upper")]),
                         width=64, height=64, clip=g.clip)[0]
    without = g.features([(RED, "upper")])
    assert all(torch.equal(with_clip.tokens[k], without.tokens[k]) for k in without.tokens)
    assert without.base == "sd15" and without.latent_hw == (8, 8)


def test_budget_input_missing_zero_or_roomy_gives_the_same_picture(host, g):
    """Graphs saved before the input existed do not send it: they must sample exactly as before."""
    feats = g.features([(RED, "upper"), (BLUE, "lower")])
    old_graph = g.apply(feats)  # the node called without garment_token_budget, as an old API graph does
    reference = g.sample(old_graph, steps=1)
    for budget in (0, 4096):  # 4096 >= every layer's 2 x 64 tokens: nothing pools
        patched = g.apply(feats, garment_token_budget=budget)
        assert host.module("nodes.patch").find_patch(patched).features is feats
        assert torch.equal(g.sample(patched, steps=1), reference)


def test_budget_pools_the_highest_resolution_layers_once_and_changes_the_picture(host, g, monkeypatch):
    feats = g.features([(RED, "upper"), (BLUE, "lower"), (GREEN, "hat")], size=128)  # layers of 16x16 and 8x8
    patched = g.apply(feats, garment_token_budget=3 * 64)
    shared = host.module("nodes.patch").find_patch(patched)
    used = shared.features
    for key, t in feats.tokens.items():
        want = t.shape[1] // 4 if t.shape[1] == 256 else t.shape[1]
        assert used.tokens[key].shape[1] == want and used.token_size(key) == t.shape[1] // want
    budget = host.module("anydressing_core.budget")
    calls = []
    pool = budget.pool_tokens
    monkeypatch.setattr(budget, "pool_tokens", lambda *a: calls.append(a) or pool(*a))
    dressed = g.sample(patched, steps=2)
    assert calls == [] and shared.features is used  # pooled once, in Apply; sampling never pools
    assert torch.isfinite(dressed).all() and not torch.equal(dressed, g.sample(g.apply(feats), steps=2))


def test_budget_on_the_small_sdxl_model(host, small_xl, g):
    feats = g.features([(RED, "upper"), (BLUE, "lower")], model=small_xl, size=128)
    pos, neg = small_sdxl_conds()
    full = g.sample(g.apply(feats, model=small_xl), positive=pos, negative=neg, steps=1)
    budgeted = g.sample(g.apply(feats, model=small_xl, garment_token_budget=64), positive=pos, negative=neg, steps=1)
    assert torch.isfinite(budgeted).all() and not torch.equal(full, budgeted)
