"""Single-file checkpoints as the trainer's base: key conversion, base detection, bad files, SDXL conditioning
and the base fingerprint.  (Numeric parity with ComfyUI's own models is in tests/nodes/test_single_file_base.py.)"""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from anydressing_core import base_check, conditioning, ldm_convert as conv, single_file as sf
from anydressing_core.errors import AnyDressingError


def sd15_shapes():
    """The block-structure keys of a real SD1.5 LDM UNet (4 levels of 320/640/1280/1280, 2 res blocks, attention
    on the first three) with the shapes the layout reader looks at."""
    shapes = {"input_blocks.0.0.weight": (320, 4, 3, 3), "out.2.weight": (4, 320, 3, 3),
              "time_embed.0.weight": (1280, 320), "out.0.weight": (320,)}
    chans = [320, 640, 1280, 1280]
    n = 1
    for level, c in enumerate(chans):
        for _ in range(2):
            shapes[f"input_blocks.{n}.0.out_layers.3.weight"] = (c, c, 3, 3)
            shapes[f"input_blocks.{n}.0.in_layers.0.weight"] = (c,)
            if level < 3:
                shapes[f"input_blocks.{n}.1.proj_in.weight"] = (c, c, 1, 1)
                shapes[f"input_blocks.{n}.1.transformer_blocks.0.attn1.to_q.weight"] = (c, c)
                shapes[f"input_blocks.{n}.1.transformer_blocks.0.attn2.to_k.weight"] = (c, 768)
            n += 1
        if level < 3:
            shapes[f"input_blocks.{n}.0.op.weight"] = (c, c, 3, 3)
            n += 1
    shapes["input_blocks.4.0.skip_connection.weight"] = (640, 320, 1, 1)
    for sub in (0, 2):
        shapes[f"middle_block.{sub}.out_layers.3.weight"] = (1280, 1280, 3, 3)
    shapes["middle_block.1.transformer_blocks.0.norm2.weight"] = (1280,)
    shapes["middle_block.1.proj_out.weight"] = (1280, 1280, 1, 1)
    for n in range(12):
        level = n // 3  # deepest first
        shapes[f"output_blocks.{n}.0.emb_layers.1.weight"] = (chans[3 - level], 1280)
        if level > 0:
            shapes[f"output_blocks.{n}.1.transformer_blocks.0.ff.net.2.weight"] = (320, 1280)
        if n % 3 == 2 and level < 3:
            shapes[f"output_blocks.{n}.{2 if level > 0 else 1}.conv.weight"] = (1280, 1280, 3, 3)
    return shapes


#: LDM -> diffusers names of SD1.5, as every SD1.5 conversion (diffusers' own, ComfyUI's) has them.
KNOWN_SD15 = {
    "input_blocks.0.0.weight": "conv_in.weight",
    "time_embed.0.weight": "time_embedding.linear_1.weight",
    "out.0.weight": "conv_norm_out.weight",
    "out.2.weight": "conv_out.weight",
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "input_blocks.2.0.in_layers.0.weight": "down_blocks.0.resnets.1.norm1.weight",
    "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
    "input_blocks.4.0.skip_connection.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
    "input_blocks.8.1.proj_in.weight": "down_blocks.2.attentions.1.proj_in.weight",
    "input_blocks.11.0.out_layers.3.weight": "down_blocks.3.resnets.1.conv2.weight",
    "middle_block.0.out_layers.3.weight": "mid_block.resnets.0.conv2.weight",
    "middle_block.1.transformer_blocks.0.norm2.weight": "mid_block.attentions.0.transformer_blocks.0.norm2.weight",
    "middle_block.2.out_layers.3.weight": "mid_block.resnets.1.conv2.weight",
    "output_blocks.0.0.emb_layers.1.weight": "up_blocks.0.resnets.0.time_emb_proj.weight",
    "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
    "output_blocks.3.1.transformer_blocks.0.ff.net.2.weight": "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight",
    "output_blocks.5.2.conv.weight": "up_blocks.1.upsamplers.0.conv.weight",
    "output_blocks.11.1.transformer_blocks.0.ff.net.2.weight": "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2.weight",
}


def test_sd15_layout_config_and_names_are_the_known_ones():
    shapes = sd15_shapes()
    layout = conv.unet_layout(shapes)
    assert layout.levels == [(320, 2), (640, 2), (1280, 2), (1280, 2)]
    assert layout.down_depth == [[1, 1], [1, 1], [1, 1], [0, 0]] and layout.mid_depth == 1
    assert layout.up_depth == [[0, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
    config = conv.unet_config(layout, "sd15")
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert config["layers_per_block"] == 2 and config["cross_attention_dim"] == 768
    assert not config["use_linear_projection"] and config["attention_head_dim"] == 8
    assert "reverse_transformer_layers_per_block" not in config and "addition_embed_type" not in config
    mapping = conv.unet_key_map(layout, list(shapes))
    for ldm, diffusers in KNOWN_SD15.items():
        assert mapping[ldm] == diffusers, ldm


def test_the_inferred_config_builds_a_unet_with_every_converted_name():
    from diffusers import UNet2DConditionModel

    shapes = sd15_shapes()
    layout = conv.unet_layout(shapes)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(conv.unet_config(layout, "sd15"))
    names = set(unet.state_dict())
    converted = conv.unet_key_map(layout, list(shapes)).values()
    assert set(converted) <= names, sorted(set(converted) - names)[:5]


def test_unsupported_unets_are_refused_with_the_reason():
    shapes = sd15_shapes()
    for k in [k for k in shapes if k.startswith("middle_block.")]:
        del shapes[k]
    shapes["middle_block.0.out_layers.3.weight"] = (1280, 1280, 3, 3)
    with pytest.raises(AnyDressingError, match="single ResBlock"):
        conv.unet_layout(shapes)
    shapes = sd15_shapes()
    shapes["input_blocks.1.0.out_layers.3.weight"] = (64, 320, 3, 3)
    with pytest.raises(AnyDressingError, match="changes width inside a level"):
        conv.unet_layout(shapes)


def _write(path, shapes):
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def test_base_detection_by_keys(tmp_path):
    unet = {"model.diffusion_model." + k: s for k, s in sd15_shapes().items()}
    rest = {"first_stage_model.decoder.conv_in.weight": (1,), "cond_stage_model.transformer.text_model.x": (1,)}
    assert sf.detect_base({**unet, **rest}) == "sd15"
    with pytest.raises(AnyDressingError, match="without .*first_stage_model"):
        sf.detect_base({**unet, "cond_stage_model.transformer.text_model.x": (1,)})
    with pytest.raises(AnyDressingError, match="no UNet"):
        sf.detect_base(rest)
    sd2 = {k: ((s[0], 1024) if k.endswith("attn2.to_k.weight") else s) for k, s in unet.items()}
    with pytest.raises(AnyDressingError, match="neither SD1.5 .* nor SDXL"):
        sf.detect_base({**sd2, **rest})
    xl = {**unet, "model.diffusion_model.label_emb.0.0.weight": (1280, 2816)}
    xl = {k: ((s[0], 2048) if k.endswith("attn2.to_k.weight") else s) for k, s in xl.items()}
    with pytest.raises(AnyDressingError, match=r"conditioner\.embedders"):
        sf.detect_base({**xl, "first_stage_model.decoder.conv_in.weight": (1,)})
    assert sf.detect_base({**xl, "first_stage_model.decoder.conv_in.weight": (1,),
                           "conditioner.embedders.0.transformer.a": (1,), "conditioner.embedders.1.model.b": (1,)}) == "sdxl"


def test_a_pickled_or_unreadable_base_is_refused_without_unpickling(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(AnyDressingError, match="pickled checkpoint .*never loaded"):
        sf.read_shapes(ckpt)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(AnyDressingError, match="not a readable safetensors checkpoint"):
        sf.read_shapes(bad)


def test_taesd_decoder_indices_shift_past_the_clamp():
    sd = {"taesd_encoder.0.weight": torch.ones(1), "taesd_decoder.1.weight": torch.ones(2),
          "taesd_decoder.3.conv.4.bias": torch.ones(3), "vae_scale": torch.tensor(0.5), "vae_shift": torch.tensor(0.1)}
    out, scale, shift = conv.taesd_to_diffusers(sd)
    assert set(out) == {"encoder.layers.0.weight", "decoder.layers.0.weight", "decoder.layers.2.conv.4.bias"}
    assert (scale, shift) == (0.5, pytest.approx(0.1))


def test_kl_vae_names_and_attention_reshape():
    sd = {"encoder.down.0.block.1.nin_shortcut.weight": torch.zeros(8, 4, 1, 1),
          "encoder.down.1.downsample.conv.weight": torch.zeros(1), "encoder.mid.block_2.norm1.weight": torch.zeros(1),
          "encoder.mid.attn_1.q.weight": torch.zeros(8, 8, 1, 1), "encoder.norm_out.bias": torch.zeros(1),
          "decoder.up.0.block.2.conv1.weight": torch.zeros(1), "decoder.up.3.upsample.conv.bias": torch.zeros(1),
          "decoder.mid.attn_1.proj_out.weight": torch.zeros(8, 8, 1, 1), "quant_conv.weight": torch.zeros(1)}
    out = conv.vae_to_diffusers(sd, levels=4)
    assert set(out) == {"encoder.down_blocks.0.resnets.1.conv_shortcut.weight",
                        "encoder.down_blocks.1.downsamplers.0.conv.weight", "encoder.mid_block.resnets.1.norm1.weight",
                        "encoder.mid_block.attentions.0.to_q.weight", "encoder.conv_norm_out.bias",
                        "decoder.up_blocks.3.resnets.2.conv1.weight", "decoder.up_blocks.0.upsamplers.0.conv.bias",
                        "decoder.mid_block.attentions.0.to_out.0.weight", "quant_conv.weight"}
    assert out["encoder.mid_block.attentions.0.to_q.weight"].shape == (8, 8)


def test_open_clip_text_tower_converts_to_the_same_function():
    """A random OpenCLIP-layout tower and the converted CLIPTextModelWithProjection give the same projection of
    the end token: q/k/v split from the fused in_proj, the projection transposed."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    width, layers, vocab, length = 64, 2, 49408, 8
    model = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=1, intermediate_size=128,
        max_position_embeddings=length, hidden_act="gelu", projection_dim=32, eos_token_id=49407, bos_token_id=49406))
    hf = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    oc = {"token_embedding.weight": hf["embeddings.token_embedding.weight"],
          "positional_embedding": hf["embeddings.position_embedding.weight"],
          "ln_final.weight": hf["final_layer_norm.weight"], "ln_final.bias": hf["final_layer_norm.bias"],
          "text_projection": model.state_dict()["text_projection.weight"].t(), "logit_scale": torch.tensor(1.0)}
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            oc[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [hf[f"{p}self_attn.{x}_proj.{kind}"] for x in "qkv"])
            oc[f"transformer.resblocks.{i}.attn.out_proj.{kind}"] = hf[f"{p}self_attn.out_proj.{kind}"]
            oc[f"transformer.resblocks.{i}.ln_1.{kind}"] = hf[f"{p}layer_norm1.{kind}"]
            oc[f"transformer.resblocks.{i}.ln_2.{kind}"] = hf[f"{p}layer_norm2.{kind}"]
            oc[f"transformer.resblocks.{i}.mlp.c_fc.{kind}"] = hf[f"{p}mlp.fc1.{kind}"]
            oc[f"transformer.resblocks.{i}.mlp.c_proj.{kind}"] = hf[f"{p}mlp.fc2.{kind}"]
    converted = conv.open_clip_to_transformers(oc)
    config = conv.text_config(converted, "clip_g")
    assert config["hidden_act"] == "gelu" and config["projection_dim"] == 32 and config["num_hidden_layers"] == 2
    config["num_attention_heads"] = 1  # 64 wide: one head of 64 in this toy tower
    twin = sf._build(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config)), converted, "toy tower")
    ids = torch.tensor([[49406, 5, 9, 49407, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.allclose(model(ids).text_embeds, twin(ids).text_embeds, atol=1e-6)


def test_sdxl_size_embedding_matches_diffusers_timesteps():
    from diffusers.models.embeddings import Timesteps

    ids = conditioning.time_ids(832, 1216, crop=(8, 16), target=(1024, 1024), batch=2)
    assert ids.tolist()[0] == [832, 1216, 8, 16, 1024, 1024]
    ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(ids.flatten()).reshape(2, -1)
    pooled = torch.randn(2, 1280)
    y = conditioning.adm_vector(pooled, ids)
    assert y.shape == (2, 2816) and torch.equal(y[:, :1280], pooled)
    assert torch.allclose(y[:, 1280:], ref, atol=1e-5)
    g = conditioning.garment_cond(torch.randn(1, 1280), 3, (512, 384))
    assert g["text_embeds"].shape == (3, 1280) and g["time_ids"].tolist() == [[512, 384, 0, 0, 512, 384]] * 3


def _norms(seed=0, width=320):
    gen = torch.Generator().manual_seed(seed)
    return {key: {"weight": 1 + 0.01 * torch.randn(width, generator=gen), "bias": 0.01 * torch.randn(width, generator=gen)}
            for key in [("input", 1, 0), ("middle", 0, 0), ("output", 3, 0)]}


def _ldm(norms):
    names = {"input": "input_blocks.{}.1", "output": "output_blocks.{}.1", "middle": "middle_block.1"}
    return {f"{names[k[0]].format(k[1])}.transformer_blocks.{k[2]}.norm2.{leaf}": t
            for k, parts in norms.items() for leaf, t in parts.items()}


def test_fingerprint_matches_any_precision_of_the_same_base_and_not_another_one():
    from types import SimpleNamespace

    norms = _norms()
    fp = base_check.fingerprint({k: {leaf: t.half().float() for leaf, t in p.items()} for k, p in norms.items()})
    meta = SimpleNamespace(base_fingerprint=fp, base_checkpoint={"file": "base.safetensors", "sha256": "ab" * 32})
    state = _ldm({k: {leaf: t.half() for leaf, t in p.items()} for k, p in norms.items()})  # the file, as fp16
    for dtype in (torch.float16, torch.float32, torch.bfloat16):  # as ComfyUI may load it
        assert base_warning(meta, {k: v.to(dtype) for k, v in state.items()}) is None, dtype
    assert base_check.ldm_norms(state).keys() == norms.keys()
    other = _ldm({k: {leaf: t.half() for leaf, t in p.items()} for k, p in _norms(seed=1).items()})
    msg = base_warning(meta, other)
    assert msg and "base.safetensors (sha256 abababababab)" in msg and "48 of 48" in msg
    assert base_warning(SimpleNamespace(base_fingerprint=None), other) is None  # older files: nothing to compare


def base_warning(meta, state):
    return base_check.base_warning(meta, state)


def test_tokenizer_folder_is_required_and_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nowhere"))
    monkeypatch.setattr(sf.Path, "home", lambda: tmp_path)
    with pytest.raises(AnyDressingError, match="model.tokenizer=FOLDER"):
        sf.tokenizer_dir("")
    with pytest.raises(AnyDressingError, match=r"lacks \['vocab.json', 'merges.txt'\]"):
        sf.tokenizer_dir(str(tmp_path))
    host = tmp_path / "ComfyUI" / "comfy" / "sd1_tokenizer"
    host.mkdir(parents=True)
    for f in sf.TOKENIZER_FILES:
        (host / f).write_text("{}")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "ComfyUI"))
    assert sf.tokenizer_dir("") == host
