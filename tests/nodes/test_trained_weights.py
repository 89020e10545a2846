"""Weights the trainer exports from a single-file checkpoint, used by the nodes in-process.

SD1.5: what Encode Garments computes with the export (GarmentsNet loaded by AnyDressing Loader, GFE LoRA per
slot, trained K'/V') equals what the trainer's own modules compute for the same garments, so the nodes run the
model that was trained.  SDXL (``base=sdxl``, the tiny SDXL-family checkpoint): a run trains, exports, and the
export loads and dresses; strength 0 is the plain sample.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from anydressing_core.features import garment_kv
from anydressing_core.garments import place_garment
from anydressing_core.train.config import load_config
from anydressing_core.train.tiny import write_dataset
from anydressing_run.trained import train_overrides

from helpers import garment_image

pytestmark = pytest.mark.slow  # trains in-process: ~15 s (SD1.5) and ~1 min (SDXL, CLIP-G on the CPU)


def _train(host, checkpoint, root, name, steps=2):
    from anydressing_core.train.engine import Trainer

    manifest = write_dataset(root / "data", count=4, size=64)
    tokenizer = host.path / "comfy" / "sd1_tokenizer"
    overrides = train_overrides(checkpoint, manifest, root / "run", steps, 64)
    trainer = Trainer(load_config(None, overrides + [f"model.tokenizer={tokenizer}", "run.batch_size=1"]))
    trainer.run()
    folder = root / "anydressing"
    folder.mkdir(exist_ok=True)
    shutil.copy(root / "run" / "anydressing.safetensors", folder / name)
    host.folder_paths.add_model_folder_path("anydressing", str(folder))
    return trainer


def _garments(host):
    chain = None
    for color, slot in (((0.9, 0.1, 0.1), "upper"), ((0.1, 0.2, 0.8), "lower")):
        kw = {} if chain is None else {"garments": chain}
        chain = host.run("AnyDressingGarment", image=garment_image(color, pattern="stripes"), slot=slot, weight=1.0,
                         **kw)[0]
    return chain


def _sample(host, model, clip, seed=1):
    pos = host.run("CLIPTextEncode", clip=clip, text="a person wearing a striped top and trousers")[0]
    neg = host.run("CLIPTextEncode", clip=clip, text="")[0]
    latent = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    return host.run("KSampler", model=model, seed=seed, steps=2, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]["samples"]


def _apply(host, model, feats, adapter, strength):
    return host.run("AnyDressingApply", model=model, features=feats, strength=strength, start_percent=0.0,
                    end_percent=1.0, form="auto", cfg_policy="garments in positive only (paper)", adapter=adapter)[0]


def test_encode_garments_with_the_export_computes_what_the_trainer_trained(host, tiny_models, tiny_model_names,
                                                                           tmp_path_factory):
    trainer = _train(host, tiny_models["checkpoint"], tmp_path_factory.mktemp("sd15"), "trained_sd15.safetensors")
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    gnet, adapter = host.run("AnyDressingLoader", anydressing_name="trained_sd15.safetensors", model=model)
    garments = _garments(host)
    feats = host.run("AnyDressingEncodeGarments", model=gnet, vae=vae, garments=garments, width=64, height=64,
                     adapter=adapter)[0]
    pixels = torch.from_numpy(np.stack([place_garment(g.image, g.mask, 64, 64)[0] for g in garments.items]))
    raw = trainer.raw
    with torch.no_grad():
        latents = trainer.comp.codec.encode(pixels.permute(0, 3, 1, 2).float() * 2 - 1)
        ours = raw.garments.encode(latents, ["upper", "lower"])
    assert set(feats.tokens) == set(ours.tokens) and len(ours.tokens) == 7
    for key, tokens in ours.tokens.items():
        assert torch.allclose(feats.tokens[key].float(), tokens, atol=1e-4), (key, (feats.tokens[key] - tokens).abs().max())
        k, v = raw.da.kv(key, tokens.reshape(1, -1, tokens.shape[-1]))
        gk, gv = garment_kv(feats, key, None, None, tokens)  # what the patch projects once per run
        assert torch.allclose(gk, k, atol=1e-4) and torch.allclose(gv, v, atol=1e-4)
    trained = _sample(host, _apply(host, model, feats, adapter, 0.7), clip)
    assert not torch.equal(trained, _sample(host, model, clip))


def test_an_sdxl_run_trains_exports_and_dresses_through_the_nodes(host, tiny_sdxl, sdxl_checkpoint, tmp_path_factory):
    from anydressing_core.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("sdxl")
    trainer = _train(host, tiny_sdxl["checkpoint"], root, "trained_sdxl.safetensors")
    exported = load_checkpoint(str(root / "anydressing" / "trained_sdxl.safetensors"))
    assert exported.meta.base == "sdxl" and exported.meta.base_checkpoint["file"] == tiny_sdxl["checkpoint"].name
    assert trainer.comp.base == "sdxl" and any(k.startswith("add_embedding.") for k in exported.garments_net)
    model, clip, vae = sdxl_checkpoint
    gnet, adapter = host.run("AnyDressingLoader", anydressing_name="trained_sdxl.safetensors", model=model)
    feats = host.run("AnyDressingEncodeGarments", model=gnet, vae=vae, garments=_garments(host), width=64, height=64,
                     adapter=adapter)[0]
    plain = _sample(host, model, clip)
    assert torch.equal(_sample(host, _apply(host, model, feats, adapter, 0.0), clip), plain)
    dressed = _sample(host, _apply(host, model, feats, adapter, 0.7), clip)
    assert torch.isfinite(dressed).all() and not torch.equal(dressed, plain)
