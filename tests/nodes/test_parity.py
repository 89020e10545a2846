"""Parity: the ComfyUI path (our nodes + stock KSampler) and the diffusers path compute ONE model.

On identical tiny random weights (the tiny SD1.5 checkpoint converted to diffusers with ComfyUI's own
``comfy.utils.unet_to_diffusers`` map, plus a 'trained' AnyDressing file with GarmentsNet weights,
GFE LoRA and Wk'/Wv'), both paths must give the same garment features F per layer and the same noise
prediction for one sampling step (conditional row dressed, unconditional row plain [paper]).

Measured on CPU fp32 (2026-11-29): features 1.4e-6, K'/V' included, and noise prediction 5.2e-7
(max |diff| relative to the tensor's max magnitude); the asserted tolerance is ``TOL`` (relative to the tensor's max magnitude).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from helpers import garment_image
from helpers import diffusers_unet_from_comfy, make_adapter

log = logging.getLogger(__name__)
TOL = 1e-5  # relative: max|a - b| <= TOL * max|b|  (measured ~1.4e-6 / ~5e-7)
SLOTS = ["upper", "lower"]


def rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def setup(host, tiny_model_names, tmp_path_factory):
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    folder = tmp_path_factory.mktemp("anydressing_parity")
    host.folder_paths.add_model_folder_path("anydressing", str(folder))
    unet = diffusers_unet_from_comfy(host, model)
    adapter, _, _ = make_adapter(host, unet, seed=7, slots=SLOTS)
    adapter.save(str(folder / "parity.safetensors"))
    garments_net, comfy_adapter = host.run("AnyDressingLoader", anydressing_name="parity.safetensors", model=model)
    pos = host.run("CLIPTextEncode", clip=clip, text="a person wearing a shirt")[0]
    neg = host.run("CLIPTextEncode", clip=clip, text="")[0]
    chain = None
    for color, slot in [((0.9, 0.1, 0.1), "upper"), ((0.1, 0.2, 0.9), "lower")]:
        kw = {} if chain is None else {"garments": chain}
        chain = host.run("AnyDressingGarment", image=garment_image(color, pattern="stripes"), slot=slot, weight=1.0, **kw)[0]
    return dict(model=model, clip=clip, vae=vae, unet=unet, folder=folder, garments_net=garments_net, adapter=comfy_adapter,
                pos=pos, neg=neg, chain=chain)


def comfy_features(host, s, size=64):
    """Encode Garments with the GarmentsNet MODEL and the adapter from AnyDressing Loader."""
    return host.run("AnyDressingEncodeGarments", model=s["garments_net"], vae=s["vae"], garments=s["chain"],
                    width=size, height=size, adapter=s["adapter"])[0]


def diffusers_features(host, s, size=64):
    """The same garments through the diffusers GarmentsNet built from the same file."""
    core = host.module("anydressing_core.diffusers_model")
    ckpt = host.module("anydressing_core.checkpoint")
    full = ckpt.load_checkpoint(str(s["folder"] / "parity.safetensors"))
    gunet = copy.deepcopy(s["unet"])
    gunet.load_state_dict(full.garments_net)
    gnet = core.GarmentsNet(gunet, context=full.meta.garments_net_context, gfe=full.gfe)
    latents = garment_latents(host, s, size)
    with torch.no_grad():
        feats = gnet.encode(latents, SLOTS)
        no_gfe = core.GarmentsNet(copy.deepcopy(gunet), context="none").encode(latents, SLOTS)
    return full.attach(feats), full, no_gfe


def test_garment_features_and_noise_prediction_match(host, setup):
    s = setup
    cf = comfy_features(host, s)
    df, full, no_gfe = diffusers_features(host, s)
    assert max(rel_err(cf.tokens[k], no_gfe.tokens[k]) for k in df.tokens) > 10 * TOL  # the GFE LoRA matters
    assert cf.form == df.form == "separate"
    worst_f = 0.0
    features = host.module("anydressing_core.features")
    for key in df.tokens:
        err = rel_err(cf.tokens[key], df.tokens[key])
        like = df.tokens[key].float()
        (ck, cv), (dk, dv) = (features.garment_kv(f, key, None, None, like) for f in (cf, df))
        worst_f = max(worst_f, err, rel_err(ck, dk), rel_err(cv, dv))
    assert set(cf.tokens) == set(df.tokens) and len(df.tokens) == 7
    assert worst_f <= TOL, f"garment features differ by {worst_f:.2e} (relative)"

    # ComfyUI: AnyDressing Apply + stock KSampler, one step; a stock unet-function wrapper records inputs/outputs
    patched = host.run("AnyDressingApply", model=s["model"], features=cf, strength=0.7, start_percent=0.0,
                       end_percent=1.0, form="auto", cfg_policy="garments in positive only (paper)",
                       adapter=s["adapter"])[0]
    records = []

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        records.append((args["input"].clone(), args["timestep"].clone(), args["c"]["c_crossattn"].clone(),
                        list(args["cond_or_uncond"]), out.clone()))
        return out

    patched = patched.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    latent = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    host.run("KSampler", model=patched, seed=3, steps=1, cfg=3.0, sampler_name="euler", scheduler="normal",
             positive=s["pos"], negative=s["neg"], latent_image=latent, denoise=1.0)
    assert records, "the sampler never called the model"

    # diffusers: DA processors with the same adapter, garments only on the conditional rows
    core = host.module("anydressing_core.diffusers_model")
    dunet = copy.deepcopy(s["unet"])
    da = core.install_dressing_attention(dunet, projections=full.projections, trainable=False)
    sampling = s["model"].get_model_object("model_sampling")
    worst_eps = 0.0
    for x, sigma, ctx, cou, denoised in records:
        chunk = x.shape[0] // len(cou)
        rows = torch.tensor([cou[i // chunk] == 0 for i in range(x.shape[0])])
        eps_comfy = (x - denoised) / sigma.view(-1, 1, 1, 1)
        with torch.no_grad(), da.use(df, strength=0.7, garment_rows=rows):
            eps_diff = dunet(sampling.calculate_input(sigma, x), sampling.timestep(sigma).float(),
                             encoder_hidden_states=ctx.float()).sample
        worst_eps = max(worst_eps, rel_err(eps_comfy, eps_diff))
        with torch.no_grad():
            plain = dunet(sampling.calculate_input(sigma, x), sampling.timestep(sigma).float(),
                          encoder_hidden_states=ctx.float()).sample
        assert rel_err(eps_diff[rows], plain[rows]) > 10 * TOL  # the garments matter at this tolerance
    log.info("parity: features %.2e, noise prediction %.2e (relative max error)", worst_f, worst_eps)
    assert worst_eps <= TOL, f"noise predictions differ by {worst_eps:.2e} (relative)"


def garment_latents(host, s, size=64):
    garments = host.module("anydressing_core.garments")
    prepared = [garments.place_garment(g.image, g.mask, size, size) for g in s["chain"].items]
    pixels = torch.from_numpy(np.stack([p[0] for p in prepared]))
    return s["model"].model.process_latent_in(s["vae"].encode(pixels)).float()


def test_magicclothing_joint_features_match_with_the_empty_prompt_context(host, setup):
    """A plain diffusers-UNet file (MagicClothing joint layout) loads directly; with the checkpoint's CLIP
    connected, GarmentsNet's attn2 reads the empty prompt in ComfyUI exactly as in diffusers."""
    from safetensors.torch import save_file

    s = setup
    core = host.module("anydressing_core.diffusers_model")
    g = torch.Generator().manual_seed(11)
    sd = {k: (v + torch.randn(v.shape, generator=g) * 0.01 if k.endswith("attn2.to_k.weight") else v).contiguous()
          for k, v in s["unet"].state_dict().items()}
    save_file(sd, str(s["folder"] / "mc_joint_like.safetensors"))
    gnet_model, adapter = host.run("AnyDressingLoader", anydressing_name="mc_joint_like.safetensors", model=s["model"],
                                   clip=s["clip"])
    assert adapter.form == "joint" and adapter.meta.garments_net_context == "empty_prompt"
    assert adapter.garment_context is not None and adapter.garment_context.shape[-1] == 768
    cf = host.run("AnyDressingEncodeGarments", model=gnet_model, vae=s["vae"], garments=s["chain"], width=64, height=64,
                  adapter=adapter)[0]
    gunet = copy.deepcopy(s["unet"])
    gunet.load_state_dict(sd)
    with torch.no_grad():
        df = core.GarmentsNet(gunet, context="empty_prompt").encode(
            garment_latents(host, s), SLOTS, encoder_hidden_states=adapter.garment_context.float())
    worst = max(rel_err(cf.tokens[k], df.tokens[k]) for k in df.tokens)
    assert worst <= TOL, f"MagicClothing-layout features differ by {worst:.2e}"
    _, no_clip = host.run("AnyDressingLoader", anydressing_name="mc_joint_like.safetensors", model=s["model"])
    removed = host.run("AnyDressingEncodeGarments", model=gnet_model, vae=s["vae"], garments=s["chain"], width=64,
                       height=64, adapter=no_clip)[0]
    assert max(rel_err(removed.tokens[k], df.tokens[k]) for k in df.tokens) > 10 * TOL  # the context matters


def test_nodes_and_pipeline_prepare_the_same_garments(host, setup):
    """One raw RGBA picture (transparency as the mask) and one RGB picture with its own mask go through the
    AnyDressing Garment node and through AnyDressingPipeline's garment preparation: identical records and
    identical encode canvases, bit for bit; zero-shot features of those canvases agree across the two paths."""
    s = setup
    pipeline = host.module("anydressing_core.pipeline")
    garments = host.module("anydressing_core.garments")
    core = host.module("anydressing_core.diffusers_model")
    rng = np.random.default_rng(3)
    rgba = np.ones((90, 70, 4), np.float32)
    rgba[10:80, 12:60, :3] = rng.random((70, 48, 3), dtype=np.float32)
    rgba[..., 3] = 0.0
    rgba[10:80, 12:60, 3] = 1.0
    rgb = np.ones((64, 48, 3), np.float32) * 0.8
    rgb[8:56, 6:40] = (0.2, 0.5, 0.9)
    mask = np.zeros((64, 48), np.float32)
    mask[8:56, 6:40] = 1.0
    chain = host.run("AnyDressingGarment", image=torch.from_numpy(rgba)[None], slot="upper", weight=1.0)[0]
    chain = host.run("AnyDressingGarment", image=torch.from_numpy(rgb)[None], slot="lower", weight=1.0,
                     mask=torch.from_numpy(mask)[None], garments=chain)[0]
    records = pipeline.AnyDressingPipeline.garment_records([rgba, rgb], ["upper", "lower"], masks=[None, mask])
    for node_g, pipe_g in zip(chain.items, records):
        assert np.array_equal(node_g.image, pipe_g.image) and np.array_equal(node_g.mask, pipe_g.mask)
        assert (node_g.slot, node_g.name) == (pipe_g.slot, pipe_g.name)
    placed_nodes = [garments.place_garment(g.image, g.mask, 64, 64)[0] for g in chain.items]
    placed_pipe = [garments.place_garment(g.image, g.mask, 64, 64)[0] for g in records]
    assert all(np.array_equal(a, b) for a, b in zip(placed_nodes, placed_pipe))
    # features: the node's garment pass against diffusers' GarmentsNet on the pipeline's canvases
    feats = host.run("AnyDressingEncodeGarments", model=s["model"], vae=s["vae"], garments=chain, width=64,
                     height=64)[0]
    pixels = torch.from_numpy(np.stack(placed_pipe))
    latents = s["model"].model.process_latent_in(s["vae"].encode(pixels)).float()
    with torch.no_grad():
        ours = core.GarmentsNet(copy.deepcopy(s["unet"]), context="none").encode(latents, ["upper", "lower"])
    worst = max(rel_err(feats.tokens[k], ours.tokens[k]) for k in ours.tokens)
    assert worst <= TOL, f"garment features differ by {worst:.2e} (relative)"
