"""AnyDressingPipeline on tiny diffusers components (random weights, CPU, a few steps)."""

import copy
import json

import pytest
import torch

from anydressing_core.checkpoint import export
from anydressing_core.diffusers_model import build_garments_net, install_dressing_attention
from anydressing_core.errors import AnyDressingError
from anydressing_core.pipeline import AnyDressingPipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

UNET = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, norm_num_groups=8,
            attention_head_dim=4, sample_size=8)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz "):
        vocab[ch] = 2 + i
        vocab[ch + "</w>"] = 40 + i
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=8)
    torch.manual_seed(0)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=100,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1).eval()
    return tok, text, vae


def make(parts, adapter=None, seed=1):
    tok, text, vae = parts
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**UNET).eval()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000)
    return AnyDressingPipeline(unet, vae, text, tok, sched, adapter=adapter)


def garments():
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 32, 24, generator=g)


def test_strength_zero_equals_no_garments_and_garments_change_the_image(parts):
    pipe = make(parts)
    kw = dict(prompt="a shirt", num_inference_steps=2, guidance_scale=3.0, height=16, width=16, output_type="latent",
              garment_size=(16, 16))
    plain = pipe(generator=torch.Generator().manual_seed(0), **kw)
    zero = pipe(garments=garments(), slots=["upper", "lower"], strength=0.0, generator=torch.Generator().manual_seed(0), **kw)
    dressed = pipe(garments=garments(), slots=["upper", "lower"], strength=0.7, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(plain, zero)
    assert (dressed - plain).abs().max() > 1e-4


def test_cfg_drops_garments_in_the_unconditional_branch(parts):
    pipe = make(parts)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    out = pipe("a shirt", garments=garments(), slots=["upper", "lower"], num_inference_steps=1, guidance_scale=4.0,
               height=16, width=16, garment_size=(16, 16), latents=z.clone(), output_type="latent", strength=0.7)
    # the same step by hand: unconditional without garments, conditional with them
    feats = pipe.encode_garments(garments(), ["upper", "lower"], size=(16, 16))
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    cond, uncond = pipe.encode_prompt("a shirt"), pipe.encode_prompt("")
    with torch.no_grad():
        e_u = pipe.unet(z, t, encoder_hidden_states=uncond).sample
        with pipe.dressing.use(feats, strength=0.7):
            e_c = pipe.unet(z, t, encoder_hidden_states=cond).sample
    want = pipe.scheduler.step(e_u + 4.0 * (e_c - e_u), t, z).prev_sample
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


def test_pipeline_from_checkpoint_uses_the_trained_weights(parts, tmp_path):
    torch.manual_seed(1)
    base = diffusers.UNet2DConditionModel(**UNET).eval()
    gnet = build_garments_net(copy.deepcopy(base), slots=["upper", "lower"], rank=2, alpha=2)
    with torch.no_grad():
        gnet.unet.conv_in.weight.add_(1.0)  # a "trained" GarmentsNet differs from the base
    da = install_dressing_attention(copy.deepcopy(base), projections="copy")
    path = tmp_path / "a.safetensors"
    export(gnet, da).save(str(path))
    tok, text, vae = parts
    torch.manual_seed(1)
    pipe = AnyDressingPipeline.from_checkpoint(str(path), diffusers.UNet2DConditionModel(**UNET).eval(), vae, text, tok,
                                               diffusers.DDIMScheduler())
    assert torch.equal(pipe.garments_net.unet.conv_in.weight, gnet.unet.conv_in.weight)
    assert not torch.equal(pipe.unet.conv_in.weight, gnet.unet.conv_in.weight)  # DressingNet stays the base
    img = pipe("a shirt", garments=list(garments()), slots=["upper", "upper"], num_inference_steps=2, height=16, width=16,
               garment_size=(16, 16), generator=torch.Generator().manual_seed(0))
    assert img.shape == (1, 3, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1
    with pytest.raises(AnyDressingError, match="'hat'"):
        pipe("a shirt", garments=list(garments()), slots=["upper", "hat"], num_inference_steps=1, height=16, width=16)


def test_adapter_for_another_unet_shape_is_refused(parts, tmp_path):
    torch.manual_seed(1)
    other = diffusers.UNet2DConditionModel(**dict(UNET, block_out_channels=(32, 32))).eval()
    adapter = export(None, install_dressing_attention(other, projections="copy"))
    with pytest.raises(AnyDressingError, match="widths"):
        make(parts, adapter=adapter)


def test_from_pipe_shares_the_stable_diffusion_components(parts):
    tok, text, vae = parts
    torch.manual_seed(1)
    sd = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok,
                                           unet=diffusers.UNet2DConditionModel(**UNET).eval(),
                                           scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipe = AnyDressingPipeline.from_pipe(sd)
    assert pipe.unet is sd.unet and pipe.vae is sd.vae and pipe.garments_net.unet is not sd.unet
    out = pipe("a shirt", garments=garments(), slots=["upper", "lower"], num_inference_steps=1, height=16, width=16,
               garment_size=(16, 16), output_type="latent")
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
