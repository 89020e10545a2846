"""AnyDressingXLPipeline on tiny SDXL-shaped diffusers components (random weights, CPU, a few steps)."""

import copy
import json

import pytest
import torch

from anydressing_core.checkpoint import export
from anydressing_core.conditioning import time_ids
from anydressing_core.diffusers_model import install_dressing_attention
from anydressing_core.errors import AnyDressingError
from anydressing_core.pipeline_xl import AnyDressingXLPipeline
from unet_configs import SD_LIKE, XL_LIKE

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def tokenizer(folder, pad):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz "):
        vocab[ch] = 3 + i
        vocab[ch + "</w>"] = 40 + i
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8,
                                      pad_token=pad)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Two tokenizers (CLIP-G pads with "!", like SDXL's), CLIP-L (8 wide) and CLIP-G (8 wide, projection 16):
    hidden 8 + 8 = the UNet's cross-attention width 16, pooled 16 = its text_embeds width."""
    tok = tokenizer(tmp_path_factory.mktemp("tok_l"), "<|endoftext|>")
    tok_2 = tokenizer(tmp_path_factory.mktemp("tok_g"), "!")
    torch.manual_seed(0)
    common = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, vocab_size=100,
                  max_position_embeddings=8, bos_token_id=0, eos_token_id=1)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(pad_token_id=1, **common)).eval()
    text_2 = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(pad_token_id=2, projection_dim=16, **common)).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1).eval()
    return tok, tok_2, text, text_2, vae


def make(parts, adapter=None, seed=1, unet=None):
    tok, tok_2, text, text_2, vae = parts
    torch.manual_seed(seed)
    unet = unet or diffusers.UNet2DConditionModel(**XL_LIKE).eval()
    return AnyDressingXLPipeline(unet, vae, text, text_2, tok, tok_2, diffusers.DDIMScheduler(), adapter=adapter)


def garments():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


KW = dict(prompt="a shirt", num_inference_steps=2, guidance_scale=3.0, height=32, width=32, output_type="latent",
          garment_size=(32, 32))


def run(pipe, **kw):
    return pipe(generator=torch.Generator().manual_seed(0), **{**KW, **kw})


def test_strength_zero_equals_no_garments_and_garments_change_the_image(parts):
    pipe = make(parts)
    plain = run(pipe)
    zero = run(pipe, garments=garments(), slots=["upper", "lower"], strength=0.0)
    dressed = run(pipe, garments=garments(), slots=["upper", "lower"], strength=0.7)
    assert torch.equal(plain, zero)
    assert (dressed - plain).abs().max() > 1e-4


def test_the_unet_gets_sdxl_conditioning_in_both_passes(parts):
    """Garment pass: the empty prompt's pooled embedding and the garment's size; sampling: the prompts'
    pooled embeddings (negative first) and the output size."""
    pipe = make(parts)
    seen = {"garments": [], "sampling": []}

    def spy(name):
        def hook(module, args, kwargs):
            added = kwargs["added_cond_kwargs"]
            seen[name].append({k: v.clone() for k, v in added.items()})
        return hook

    handles = [pipe.garments_net.unet.register_forward_pre_hook(spy("garments"), with_kwargs=True),
               pipe.unet.register_forward_pre_hook(spy("sampling"), with_kwargs=True)]
    try:
        run(pipe, garments=garments(), slots=["upper", "lower"], garment_size=(48, 32), height=32, width=64,
            negative_prompt="blurry")
    finally:
        for h in handles:
            h.remove()
    (g,) = seen["garments"]
    empty, pos, neg = pipe.encode_prompt("")[1], pipe.encode_prompt("a shirt")[1], pipe.encode_prompt("blurry")[1]
    assert torch.equal(g["time_ids"], torch.tensor([[48.0, 32, 0, 0, 48, 32]] * 2))
    assert torch.allclose(g["text_embeds"], empty.expand(2, -1)) and not torch.allclose(empty, pos)
    assert len(seen["sampling"]) == 2
    for s in seen["sampling"]:
        assert torch.equal(s["time_ids"], torch.tensor([[32.0, 64, 0, 0, 32, 64]] * 2))
        assert torch.allclose(s["text_embeds"], torch.cat([neg, pos]))


def test_time_ids_follow_comfyui_encode_adm_order():
    assert time_ids(1216, 832).tolist() == [[1216, 832, 0, 0, 1216, 832]]
    assert time_ids(1024, 768, (8, 4), (512, 384)).tolist() == [[1024, 768, 8, 4, 512, 384]]


def test_garment_token_budget_pools_once_and_zero_changes_nothing(parts):
    pipe = make(parts)
    full = pipe.encode_garments(garments(), ["upper", "lower"], size=(32, 32))
    pooled = pipe.encode_garments(garments(), ["upper", "lower"], size=(32, 32), token_budget=32)
    assert full.base == "sdxl" and full.latent_hw == (16, 16)  # the tiny VAE downsamples by 2
    top = max(full.tokens, key=lambda k: full.tokens[k].shape[1])
    deep = min(full.tokens, key=lambda k: full.tokens[k].shape[1])
    assert full.tokens[top].shape[1] == 64 and pooled.tokens[top].shape[1] == 16 and pooled.token_size(top) == 4
    assert pooled.flat(top).shape[1] == 32  # what K'/V' are projected from: 2 garments x 16
    assert torch.equal(pooled.tokens[deep], full.tokens[deep]) and pooled.token_size(deep) == 1
    assert torch.equal(run(pipe, garments=garments(), slots=["upper", "lower"], garment_token_budget=0),
                       run(pipe, garments=garments(), slots=["upper", "lower"]))
    budgeted = run(pipe, garments=garments(), slots=["upper", "lower"], garment_token_budget=32)
    assert torch.isfinite(budgeted).all()


def test_sd15_unet_or_adapter_is_refused_naming_both_bases(parts):
    torch.manual_seed(1)
    sd15 = diffusers.UNet2DConditionModel(**SD_LIKE).eval()
    with pytest.raises(AnyDressingError, match="SDXL.*SD1.5"):
        make(parts, unet=sd15)
    adapter = export(None, install_dressing_attention(copy.deepcopy(sd15), projections="copy"))
    assert adapter.meta.base == "sd15"
    with pytest.raises(AnyDressingError, match="made for sd15.*SDXL"):
        make(parts, adapter=adapter)
