"""Importers recognise peer weights by their keys and the converter writes loadable AnyDressing files."""

import pytest
import torch
from safetensors.torch import save_file

from anydressing_core import convert
from anydressing_core.checkpoint import load_checkpoint
from anydressing_core.weights import load_weights
from anydressing_core.errors import AnyDressingError
from anydressing_core.importers import detect_layout, import_state_dicts, infer_unet_config
from anydressing_core.keys import diffusers_layer_keys, processor_order

diffusers = pytest.importorskip("diffusers")

from unet_configs import SD_LIKE, XL_LIKE  # noqa: E402  (shared tiny diffusers UNet configs)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**SD_LIKE).eval()


def ip_pairs(unet, suffix, prefix=""):
    """IP-Adapter-style projections numbered {2j} in attn_processors order, value = distinct per layer."""
    out = {}
    widths = {}
    for name, key in diffusers_layer_keys(unet.config).items():
        widths[key] = dict(unet.named_modules())[name + ".attn1"].to_q.in_features
    for j, key in enumerate(processor_order(unet.config)):
        c = widths[key]
        out[f"{prefix}{2 * j}.to_k_{suffix}.weight"] = torch.full((c, c), float(j))
        out[f"{prefix}{2 * j}.to_v_{suffix}.weight"] = torch.full((c, c), -float(j))
    return out


@pytest.mark.parametrize("config", [SD_LIKE, XL_LIKE], ids=["sd15-like", "sdxl-like"])
def test_unet_config_inferred_from_keys_gives_the_same_layers(config):
    torch.manual_seed(0)
    u = diffusers.UNet2DConditionModel(**config)
    inferred = infer_unet_config(u.state_dict())
    assert diffusers_layer_keys(inferred) == diffusers_layer_keys(u.config)
    assert processor_order(inferred) == processor_order(u.config)


def test_magicclothing_joint_is_garmentsnet_only_joint_form(unet, tmp_path):
    sd = unet.state_dict()
    assert detect_layout(sd) == "diffusers_unet"
    path = tmp_path / "weights_with_any_name.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    adapter = load_weights(str(path))  # imported on the fly: safetensors, keys say what it is
    assert adapter.form == "joint" and adapter.projections is None and adapter.gfe is None
    assert adapter.meta.garments_net_context == "empty_prompt"
    assert "non-commercial" in adapter.meta.licence
    assert set(adapter.garments_net) == set(sd)
    assert adapter.layers == list(diffusers_layer_keys(unet.config).values())


def test_magicclothing_stable_maps_2j_numbering_onto_block_keys(unet, tmp_path):
    ip = ip_pairs(unet, "ip")
    assert detect_layout(ip) == "ip_layer"
    unet_file, ip_file = tmp_path / "a.safetensors", tmp_path / "b.pth"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(unet_file))
    torch.save(ip, str(ip_file))
    out = tmp_path / "stable.safetensors"
    assert convert.main([str(ip_file), str(unet_file), "-o", str(out)]) == 0  # any order
    adapter = load_checkpoint(str(out))
    assert adapter.form == "separate"
    for j, key in enumerate(processor_order(unet.config)):
        wk, wv = adapter.projections.weights(key)
        assert float(wk[0, 0]) == j and float(wv[0, 0]) == -j
    # with the SD-like tiny UNet: down (input.1.0), up (output.2.0, output.3.0), then mid
    assert processor_order(unet.config) == [("input", 1, 0), ("output", 2, 0), ("output", 3, 0), ("middle", 0, 0)]


def test_imagdressing_pickle_with_module_wrapper(unet, tmp_path):
    module = {f"ref_unet.{k}": v for k, v in unet.state_dict().items()}
    module.update(ip_pairs(unet, "ref", prefix="adapter_modules."))
    module.update({"proj.latents": torch.randn(1, 16, 32), "proj.proj_in.weight": torch.randn(32, 64)})
    src = tmp_path / "IMAG.pt"
    torch.save({"module": module}, str(src))
    out = tmp_path / "imag.safetensors"
    assert convert.main([str(src), "-o", str(out), "--dtype", "fp16"]) == 0
    adapter = load_checkpoint(str(out))
    assert adapter.meta.garments_net_context == "image_tokens" and adapter.form == "separate"
    assert set(adapter.resampler) == {"latents", "proj_in.weight"}
    assert adapter.garments_net["conv_in.weight"].dtype == torch.float16
    assert float(adapter.projections.weights(("middle", 0, 0))[0][0, 0]) == 3.0


def test_mismatched_parts_and_unknown_layouts_are_errors(unet, tmp_path):
    ip = ip_pairs(unet, "ip")
    with pytest.raises(AnyDressingError, match="need the garment extractor"):
        import_state_dicts([ip])
    short = {k: v for k, v in ip.items() if not k.startswith("6.")}
    with pytest.raises(AnyDressingError, match="3 attention modules.*4 self-attention layers"):
        import_state_dicts([unet.state_dict(), short])
    wrong_width = dict(ip)
    wrong_width["0.to_k_ip.weight"] = torch.zeros(64, 64)
    with pytest.raises(AnyDressingError, match="do not belong together"):
        import_state_dicts([unet.state_dict(), wrong_width])
    with pytest.raises(AnyDressingError, match="match no known layout"):
        import_state_dicts([{"encoder.weight": torch.zeros(1)}])


def test_converter_refuses_pickled_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, str(src))
    assert convert.main([str(src), "-o", str(tmp_path / "o.safetensors")]) == 2
    captured = capsys.readouterr()
    assert "weights-only" in captured.err and "pwned" not in captured.out
