"""Bad input across bases (docs/BAD_INPUT.md, "Mixing SD1.5 and SDXL"): weights, VAEs, CLIPs and garment features
made for one base and wired to a model of the other are refused before any VAE encode or UNet forward, with a
message that names both bases and the fix. Uses a small SDXL-shaped UNet (ComfyUI's SDXL model class) and the
tiny SD1.5 checkpoint, so no big file is needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers import Graph
from sdxl_helpers import small_sdxl_model

RED = (0.9, 0.1, 0.1)
PAPER = "garments in positive only (paper)"
DOC = Path(__file__).resolve().parents[2] / "docs" / "BAD_INPUT.md"
CASES = ("B53", "B54", "B55", "B56", "B57", "B58")


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


@pytest.fixture(scope="module")
def small_xl(host):
    return small_sdxl_model(host)


@pytest.fixture
def heavy(g, small_xl, monkeypatch):
    """Counts VAE encodes (any VAE) and UNet forwards of both models."""
    import comfy.sd

    calls = {"vae": 0, "unet": 0}
    encode = comfy.sd.VAE.encode

    def counting(self, *a, **k):
        calls["vae"] += 1
        return encode(self, *a, **k)

    monkeypatch.setattr(comfy.sd.VAE, "encode", counting)
    bump = lambda *a, **k: calls.__setitem__("unet", calls["unet"] + 1)  # noqa: E731
    hooks = [m.model.diffusion_model.register_forward_pre_hook(bump) for m in (g.model, small_xl)]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def refused(heavy, fn, *patterns):
    with pytest.raises(ValueError) as info:
        fn()
    assert type(info.value).__name__ == "AnyDressingError", f"{type(info.value).__name__}: {info.value}"
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), str(info.value)
    assert heavy == {"vae": 0, "unet": 0}, f"heavy work ran before the error: {heavy}"
    return str(info.value)


def adapter_for(host, model, base, folder, name):
    """AnyDressing weights (Wk'/Wv' only) that fit ``model``'s layers exactly, labelled ``base``."""
    ckpt = host.module("anydressing_core.checkpoint")
    modules = host.module("nodes.common").attn1_modules(model.model.diffusion_model)
    tensors = {}
    for key, m in modules.items():
        c = m.to_k.in_features
        s = f"{key[0]}.{key[1]}.{key[2]}"
        tensors[f"da.{s}.to_k"], tensors[f"da.{s}.to_v"] = m.to_k.weight.detach().float(), m.to_v.weight.detach().float()
        assert tensors[f"da.{s}.to_k"].shape == (c, c)
    path = folder / name
    ckpt.save_checkpoint(str(path), tensors, ckpt.CheckpointMeta(base=base, layers=list(modules)))
    return ckpt.load_checkpoint(str(path))


def taesd(host, scale):
    """A TAESD VAE as ComfyUI's VAELoader makes one for a base: ``vae_scale`` 0.18215 (taesd) / 0.13025 (taesdxl)."""
    import comfy.sd
    from devtools import tiny_models

    sd = tiny_models._taesd_sd(2)
    sd["vae_scale"] = torch.tensor(scale)
    return comfy.sd.VAE(sd=sd)


def encode(host, model, vae, g, **kw):
    return host.run("AnyDressingEncodeGarments", model=model, vae=vae, garments=g.garments([(RED, "upper")]),
                    width=64, height=64, **kw)[0]


def apply(host, model, feats, **kw):
    return host.run("AnyDressingApply", model=model, features=feats, strength=0.7, start_percent=0.0,
                    end_percent=1.0, form="auto", cfg_policy=PAPER, **kw)[0]


def test_b53_sd15_weights_on_an_sdxl_model(host, g, small_xl, heavy, tmp_path):
    weights = adapter_for(host, g.model, "sd15", tmp_path, "sd15_weights.safetensors")
    both = ("made for SD1\\.5, but the MODEL is SDXL", "weights made for SDXL \\(base=sdxl\\)", "an SD1\\.5 checkpoint")
    refused(heavy, lambda: encode(host, small_xl, g.vae, g, adapter=weights), *both)
    feats = encode(host, small_xl, g.vae, g)
    heavy.update(vae=0, unet=0)
    refused(heavy, lambda: apply(host, small_xl, feats, adapter=weights), *both)
    host.folder_paths.add_model_folder_path("anydressing", str(tmp_path))
    refused(heavy, lambda: host.run("AnyDressingLoader", anydressing_name="sd15_weights.safetensors", model=small_xl),
            *both)


def test_b54_sdxl_weights_on_an_sd15_model(host, g, small_xl, heavy, tmp_path):
    weights = adapter_for(host, small_xl, "sdxl", tmp_path, "sdxl_weights.safetensors")
    both = ("made for SDXL, but the MODEL is SD1\\.5", "weights made for SD1\\.5 \\(base=sd15\\)", "an SDXL checkpoint")
    refused(heavy, lambda: encode(host, g.model, g.vae, g, adapter=weights), *both)
    feats = g.features([(RED, "upper")])
    heavy.update(vae=0, unet=0)
    refused(heavy, lambda: apply(host, g.model, feats, adapter=weights), *both)
    assert encode(host, small_xl, g.vae, g, adapter=weights).base == "sdxl"  # on its own base it is accepted


def test_b55_a_taesd_of_the_other_base(host, g, small_xl, heavy):
    sd15_vae, sdxl_vae = taesd(host, 0.18215), taesd(host, 0.13025)
    refused(heavy, lambda: encode(host, small_xl, sd15_vae, g), "TAESD for SD1\\.5", "the MODEL is SDXL",
            "Connect the SDXL checkpoint's own VAE", "taesdxl")
    refused(heavy, lambda: encode(host, g.model, sdxl_vae, g), "TAESD for SDXL", "the MODEL is SD1\\.5", "taesd\\b")
    heavy.update(vae=0, unet=0)
    assert encode(host, small_xl, sdxl_vae, g).base == "sdxl"  # the matching ones, and unmarked VAEs, pass
    assert encode(host, g.model, sd15_vae, g).base == "sd15"


def test_b56_garments_encoded_for_the_other_base(host, g, small_xl, heavy):
    xl_feats, sd15_feats = encode(host, small_xl, g.vae, g), encode(host, g.model, g.vae, g)
    heavy.update(vae=0, unet=0)
    refused(heavy, lambda: apply(host, g.model, xl_feats), "encoded with SDXL, but the MODEL is SD1\\.5",
            "Encode the garments with the MODEL you sample with")
    refused(heavy, lambda: apply(host, small_xl, sd15_feats), "encoded with SD1\\.5, but the MODEL is SDXL")


def test_b57_an_sd15_clip_into_encode_garments_of_an_sdxl_model(host, g, small_xl, heavy):
    refused(heavy, lambda: encode(host, small_xl, g.vae, g, clip=g.clip), "768 wide", "CLIP-G's 1280",
            "CLIP of the SDXL checkpoint")
    refused(heavy, lambda: encode(host, small_xl, g.vae, g, clip=g.vae), "'clip' must be a CLIP")


def test_b58_garment_token_budget_out_of_range(host, g, heavy):
    feats = g.features([(RED, "upper")])
    heavy.update(vae=0, unet=0)
    for bad in (-1, 70000, 2.5, True):
        refused(heavy, lambda: apply(host, g.model, feats, garment_token_budget=bad), "garment_token_budget",
                "from 0 \\(no budget\\) to 65536")


def test_catalogue_lists_these_cases():
    text = DOC.read_text()
    missing = [c for c in CASES if f"| {c} |" not in text]
    assert not missing, f"docs/BAD_INPUT.md lacks {missing}"
