"""AnyDressingLoader inside the real ComfyUI host: model folder, GarmentsNet MODEL, adapter hooks, errors."""

from __future__ import annotations

import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from helpers import TINY_DIFFUSERS, diffusers_unet_from_comfy, make_adapter  # noqa: E402

@pytest.fixture(scope="module")
def base(host, tiny_model_names):
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    return model, clip, vae


@pytest.fixture(scope="module")
def folder(host, tmp_path_factory):
    d = tmp_path_factory.mktemp("anydressing")
    host.folder_paths.add_model_folder_path("anydressing", str(d))
    return d


@pytest.fixture(scope="module")
def saved(host, base, folder):
    unet = diffusers_unet_from_comfy(host, base[0])
    adapter, gnet, da = make_adapter(host, unet)
    adapter.save(str(folder / "trained.safetensors"))
    zs, _, _ = make_adapter(host, unet, include_unet=False)
    zs.save(str(folder / "projections_only.safetensors"))
    return unet, gnet, da


def test_folder_is_registered_and_lists_safetensors_only(host, folder, saved):
    loader = host.module("nodes.loader")
    (folder / "old.pth").write_bytes(b"pickle")
    names = loader.weight_files()
    assert "trained.safetensors" in names and "old.pth" not in names
    schema = loader.AnyDressingLoader.INPUT_TYPES()
    assert "trained.safetensors" in schema["required"]["anydressing_name"][1]["options"]
    for section in schema.values():
        for name, (_, opts) in section.items():
            assert opts.get("tooltip"), name
    assert loader.AnyDressingLoader.CATEGORY == "AnyDressing/loaders" and loader.AnyDressingLoader.DESCRIPTION


def test_loader_gives_a_comfy_garmentsnet_with_the_trained_weights(host, base, saved):
    import comfy.model_patcher

    loader = host.module("nodes.loader")
    unet, gnet, _ = saved
    model, adapter = loader.load_adapter("trained.safetensors", model=base[0])
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and model is not base[0]
    dm = model.model.diffusion_model
    got = dm.input_blocks[1][1].transformer_blocks[0].attn1.to_v.weight.float()
    want = gnet.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_v.weight
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, base[0].model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_v.weight.float())
    assert adapter.garments_net is None and adapter.has_garments_net  # tensors handed to ComfyUI, not kept twice
    assert adapter.meta.slots == ["upper", "lower"] and adapter.projections is not None


def test_file_without_garmentsnet_uses_the_base_model(host, base, saved):
    loader = host.module("nodes.loader")
    errors = host.module("anydressing_core.errors")
    model, adapter = loader.load_adapter("projections_only.safetensors", model=base[0])
    assert model.model is base[0].model  # a clone of the base MODEL: GarmentsNet = base UNet
    with pytest.raises(errors.AnyDressingError, match="no GarmentsNet weights.*Connect your checkpoint's MODEL"):
        loader.load_adapter("projections_only.safetensors")


def test_adapter_for_another_layer_layout_is_refused(host, base, folder):
    loader = host.module("nodes.loader")
    ckpt = host.module("anydressing_core.checkpoint")
    errors = host.module("anydressing_core.errors")
    layers = [("input", 4, 0), ("input", 4, 1), ("middle", 0, 0)]  # SDXL-like keys in weights labelled SD1.5
    meta = ckpt.CheckpointMeta(base="sd15", layers=layers)  # (weights labelled SDXL: tests/nodes/test_bad_input_sdxl.py)
    tensors = {}
    for k in layers:
        s = f"{k[0]}.{k[1]}.{k[2]}"
        tensors[f"da.{s}.to_k"] = torch.zeros(640, 640)
        tensors[f"da.{s}.to_v"] = torch.zeros(640, 640)
    ckpt.save_checkpoint(str(folder / "xl.safetensors"), tensors, meta)
    with pytest.raises(errors.AnyDressingError, match=r"sd15 UNet with 3 self-attention layers.*has 7"):
        loader.load_adapter("xl.safetensors", model=base[0])


def test_encode_options_install_gfe_hooks_without_touching_the_model(host, base, saved):
    loader = host.module("nodes.loader")
    adapter_side = host.module("nodes.adapter")
    model, adapter = loader.load_adapter("trained.safetensors", model=base[0])
    keys = list(host.module("nodes.common").model_channels(model))
    before = copy.copy(model.model_options.get("transformer_options", {}))
    opts = adapter_side.encode_options(adapter, {"patches": {"attn1_patch": ["recorder"]}, "patches_replace": {}},
                                         ["upper", "upper"], keys)
    assert opts["patches"]["attn1_patch"][0] == "recorder" and len(opts["patches"]["attn1_patch"]) == 2
    assert set(opts["patches_replace"]["attn1"]) == set(keys) and len(opts["patches"]["attn1_output_patch"]) == 1
    assert model.model_options.get("transformer_options", {}) == before
    errors = host.module("anydressing_core.errors")
    with pytest.raises(errors.AnyDressingError, match="'hat'"):
        adapter_side.encode_options(adapter, {}, ["hat"], keys)


def test_encode_and_apply_take_the_adapter(host, base, saved):
    from helpers import garment_image

    errors = host.module("anydressing_core.errors")
    model, clip, vae = base
    gnet, adapter = host.run("AnyDressingLoader", anydressing_name="trained.safetensors", model=model)
    chain = host.run("AnyDressingGarment", image=garment_image((0.9, 0.1, 0.1)), slot="upper", weight=1.0)[0]
    feats = host.run("AnyDressingEncodeGarments", model=gnet, vae=vae, garments=chain, width=64, height=64,
                     adapter=adapter)[0]
    # the adapter's form and projections travel with the features (K'/V' are computed once per run)
    assert feats.form == "separate" and feats.projections is adapter.projections and feats.gfe
    key = next(iter(feats.tokens))
    wk, _ = adapter.projections.weights(key)
    features = host.module("anydressing_core.features")
    gk, _ = features.garment_kv(feats, key, None, None, feats.tokens[key].float())
    torch.testing.assert_close(gk, feats.flat(key).float() @ wk.float().t(), rtol=1e-4, atol=1e-5)
    patched = host.run("AnyDressingApply", model=model, features=feats, strength=0.7, start_percent=0.0, end_percent=1.0,
                       form="auto", cfg_policy="garments in positive only (paper)", adapter=adapter)[0]
    assert patched is not model
    hat = host.run("AnyDressingGarment", image=garment_image((0.1, 0.9, 0.1)), slot="hat", weight=1.0, garments=chain)[0]
    with pytest.raises(errors.AnyDressingError, match=r"'hat'.*\['upper', 'lower'\]"):
        host.run("AnyDressingEncodeGarments", model=gnet, vae=vae, garments=hat, width=64, height=64, adapter=adapter)


class _FakeClipVision:
    """Stands in for Load CLIP Vision's output: ``encode_image`` gives penultimate tokens of a fixed width."""

    def __init__(self, width, seed=0):
        self.width, self.seed, self.calls = width, seed, 0

    def encode_image(self, image, crop=True):
        self.calls += 1
        g = torch.Generator().manual_seed(self.seed)
        base = torch.randn(1, 9, self.width, generator=g)
        return {"penultimate_hidden_states": base + image.mean(dim=(1, 2, 3)).view(-1, 1, 1)}


def test_imagdressing_resampler_context_reaches_garmentsnet(host, base, saved):
    """IMAGDressing weights: Encode Garments runs their resampler over CLIP-vision tokens of each garment and
    GarmentsNet's cross-attention reads it; without clip_vision the features differ (attn2 removed)."""
    from helpers import garment_image
    from resampler_weights import tiny_resampler

    errors = host.module("anydressing_core.errors")
    model, clip, vae = base
    gnet, adapter = host.run("AnyDressingLoader", anydressing_name="trained.safetensors", model=model)
    adapter.resampler = tiny_resampler(embed=48, dim=768, queries=4, inner=64, depth=1)
    adapter.meta.garments_net_context = "image_tokens"
    chain = host.run("AnyDressingGarment", image=garment_image((0.9, 0.1, 0.1)), slot="upper", weight=1.0)[0]
    chain = host.run("AnyDressingGarment", image=garment_image((0.1, 0.1, 0.9)), slot="lower", weight=1.0,
                     garments=chain)[0]

    def encode(cv):
        return host.run("AnyDressingEncodeGarments", model=gnet, vae=vae, garments=chain, width=64, height=64,
                        adapter=adapter, clip_vision=cv)[0]

    cv = _FakeClipVision(48)
    with_tokens, without = encode(cv), encode(None)
    assert cv.calls == 1
    last = max(with_tokens.tokens)  # a layer after the first cross-attention
    assert not torch.allclose(with_tokens.tokens[last], without.tokens[last])
    torch.testing.assert_close(encode(_FakeClipVision(48)).tokens[last], with_tokens.tokens[last])
    with pytest.raises(errors.AnyDressingError, match="CLIP vision"):
        encode(_FakeClipVision(40))


def test_ldm_config_from_diffusers_matches_comfys_own(host, base):
    keys = host.module("anydressing_core.keys")
    theirs = base[0].model.model_config.unet_config
    ours = keys.ldm_unet_config(TINY_DIFFUSERS)
    for name in ("num_res_blocks", "channel_mult", "transformer_depth", "transformer_depth_output",
                 "transformer_depth_middle", "model_channels", "context_dim", "in_channels"):
        assert list(ours[name]) == list(theirs[name]) if isinstance(ours[name], list) else ours[name] == theirs[name], name
    comfy_keys = set(host.module("nodes.common").attn1_modules(base[0].model.diffusion_model))
    assert set(keys.diffusers_layer_keys(TINY_DIFFUSERS).values()) == comfy_keys
