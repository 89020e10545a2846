"""Parity on SDXL: the ComfyUI path (our nodes + stock KSampler on the tiny SDXL checkpoint) and the diffusers
path (``AnyDressingXLPipeline``'s pieces) compute one model, as tests/nodes/test_parity.py checks for SD1.5.

Identical weights: the tiny SDXL checkpoint's UNet converted to diffusers with ComfyUI's own
``comfy.utils.unet_to_diffusers`` map, plus a 'trained' AnyDressing file (GarmentsNet weights, GFE LoRA, Wk'/Wv')
with ``base=sdxl``. Both paths must give the same garment features F and K'/V' per layer, with the garment pass
conditioned on the empty prompt's pooled CLIP-G embedding and the garment's size, and the same noise prediction
for one CFG step (conditional row dressed, unconditional row plain [paper]). ComfyUI's ADM vector must also equal
diffusers' add-embedding input for the same pooled embedding and size.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from helpers import garment_image, make_adapter

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow  # the 1.2 GB tiny SDXL checkpoint

log = logging.getLogger(__name__)
TOL = 1e-5  # relative: max|a - b| <= TOL * max|b|, as for SD1.5
SLOTS = ["upper", "lower"]
SIZE = 64

#: the diffusers twin of devtools/tiny_models.py's SDXL UNet: three 320-wide levels, Vega's depths, 5 heads of 64
TINY_SDXL_DIFFUSERS = dict(
    block_out_channels=(320, 320, 320), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1, 2),
    cross_attention_dim=2048, attention_head_dim=5, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=8)


def rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def diffusers_unet(model):
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)  # diffusers key -> LDM key
    ldm = model.model.diffusion_model.state_dict()
    unet = diffusers.UNet2DConditionModel(**TINY_SDXL_DIFFUSERS)
    own = set(unet.state_dict())  # the map names label_emb both class_embedding and add_embedding (SDXL's)
    missing, unexpected = unet.load_state_dict({d: ldm[k].float() for d, k in mapping.items() if k in ldm and d in own},
                                               strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    return unet.eval()


@pytest.fixture(scope="module")
def setup(host, sdxl_checkpoint, tmp_path_factory):
    model, clip, vae = sdxl_checkpoint
    folder = tmp_path_factory.mktemp("anydressing_parity_sdxl")
    host.folder_paths.add_model_folder_path("anydressing", str(folder))
    unet = diffusers_unet(model)
    adapter, _, _ = make_adapter(host, unet, seed=7, slots=SLOTS)
    assert adapter.meta.base == "sdxl"
    adapter.save(str(folder / "parity_sdxl.safetensors"))
    garments_net, adapter = host.run("AnyDressingLoader", anydressing_name="parity_sdxl.safetensors", model=model)
    pos = host.run("CLIPTextEncode", clip=clip, text="a person wearing a shirt")[0]
    neg = host.run("CLIPTextEncode", clip=clip, text="")[0]
    chain = None
    for color, slot in [((0.9, 0.1, 0.1), "upper"), ((0.1, 0.2, 0.9), "lower")]:
        kw = {} if chain is None else {"garments": chain}
        chain = host.run("AnyDressingGarment", image=garment_image(color, pattern="stripes"), slot=slot, weight=1.0,
                         **kw)[0]
    return dict(model=model, clip=clip, vae=vae, unet=unet, folder=folder, garments_net=garments_net,
                adapter=adapter, pos=pos, neg=neg, chain=chain)


def garment_latents(host, s):
    garments = host.module("anydressing_core.garments")
    prepared = [garments.place_garment(g.image, g.mask, SIZE, SIZE) for g in s["chain"].items]
    pixels = torch.from_numpy(np.stack([p[0] for p in prepared]))
    return s["model"].model.process_latent_in(s["vae"].encode(pixels)).float()


def test_sdxl_features_and_noise_prediction_match(host, setup):
    s = setup
    core = host.module("anydressing_core.diffusers_model")
    ckpt = host.module("anydressing_core.checkpoint")
    conditioning = host.module("anydressing_core.conditioning")
    features = host.module("anydressing_core.features")
    cf = host.run("AnyDressingEncodeGarments", model=s["garments_net"], vae=s["vae"], garments=s["chain"], width=SIZE,
                  height=SIZE, adapter=s["adapter"], clip=s["clip"])[0]
    assert cf.base == "sdxl"

    full = ckpt.load_checkpoint(str(s["folder"] / "parity_sdxl.safetensors"))
    gunet = copy.deepcopy(s["unet"])
    gunet.load_state_dict(full.garments_net)
    gnet = core.GarmentsNet(gunet, context=full.meta.garments_net_context, gfe=full.gfe)
    _, pooled_empty = s["clip"].encode_from_tokens(s["clip"].tokenize(""), return_pooled=True)
    added = conditioning.garment_cond(pooled_empty.float(), len(SLOTS), (SIZE, SIZE))  # the XL pipeline's
    latents = garment_latents(host, s)
    with torch.no_grad():
        df = full.attach(gnet.encode(latents, SLOTS, added_cond_kwargs=added))
        zero_cond = full.attach(gnet.encode(latents, SLOTS))
    assert set(cf.tokens) == set(df.tokens) and len(df.tokens) == 17 and cf.form == df.form
    worst_f = 0.0
    for k in df.tokens:
        like = df.tokens[k].float()
        (ck, cv), (dk, dv) = (features.garment_kv(f, k, None, None, like) for f in (cf, df))
        worst_f = max(worst_f, rel_err(cf.tokens[k], df.tokens[k]), rel_err(ck, dk), rel_err(cv, dv))
    assert worst_f <= TOL, f"garment features differ by {worst_f:.2e} (relative)"
    # the pooled and size conditioning of the garment pass matters at this tolerance
    assert max(rel_err(zero_cond.tokens[k], df.tokens[k]) for k in df.tokens) > 10 * TOL

    patched = host.run("AnyDressingApply", model=s["model"], features=cf, strength=0.7, start_percent=0.0,
                       end_percent=1.0, form="auto", cfg_policy="garments in positive only (paper)",
                       adapter=s["adapter"])[0]
    records = []

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        records.append((args["input"].clone(), args["timestep"].clone(), args["c"]["c_crossattn"].clone(),
                        args["c"]["y"].clone(), list(args["cond_or_uncond"]), out.clone()))
        return out

    patched = patched.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    latent = host.run("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)[0]
    host.run("KSampler", model=patched, seed=3, steps=1, cfg=3.0, sampler_name="euler", scheduler="normal",
             positive=s["pos"], negative=s["neg"], latent_image=latent, denoise=1.0)
    assert records, "the sampler never called the model"

    dunet = copy.deepcopy(s["unet"])
    da = core.install_dressing_attention(dunet, projections=full.projections, trainable=False)
    sampling = s["model"].get_model_object("model_sampling")
    worst_eps = 0.0
    for x, sigma, ctx, y, cou, denoised in records:
        b = x.shape[0]
        ids = conditioning.time_ids(SIZE, SIZE, batch=b)
        with torch.no_grad():  # ComfyUI's ADM vector = diffusers' add-embedding input for the same pooled and size
            time_embeds = dunet.add_time_proj(ids.flatten()).reshape(b, -1)
        assert rel_err(y[:, 1280:], time_embeds) <= TOL
        chunk = b // len(cou)
        rows = torch.tensor([cou[i // chunk] == 0 for i in range(b)])
        eps_comfy = (x - denoised) / sigma.view(-1, 1, 1, 1)
        kw = dict(encoder_hidden_states=ctx.float(),
                  added_cond_kwargs={"text_embeds": y[:, :1280].float(), "time_ids": ids})
        with torch.no_grad(), da.use(df, strength=0.7, garment_rows=rows):
            eps_diff = dunet(sampling.calculate_input(sigma, x), sampling.timestep(sigma).float(), **kw).sample
        worst_eps = max(worst_eps, rel_err(eps_comfy, eps_diff))
        with torch.no_grad():
            plain = dunet(sampling.calculate_input(sigma, x), sampling.timestep(sigma).float(), **kw).sample
        assert rel_err(eps_diff[rows], plain[rows]) > 10 * TOL  # the garments matter at this tolerance
    log.info("SDXL parity: features %.2e, noise prediction %.2e (relative max error)", worst_f, worst_eps)
    assert worst_eps <= TOL, f"noise predictions differ by {worst_eps:.2e} (relative)"
