"""The AnyDressing checkpoint format: round trip, validation and the errors bad files produce."""

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from anydressing_core.checkpoint import CheckpointMeta, export, load_checkpoint, save_checkpoint
from anydressing_core.diffusers_model import build_garments_net, install_dressing_attention
from anydressing_core.errors import AnyDressingError
from anydressing_core.features import GarmentFeatures, garment_kv
from anydressing_core.pipeline import unet_channels

diffusers = pytest.importorskip("diffusers")

from unet_configs import SD_LIKE, XL_LIKE  # noqa: E402  (shared tiny diffusers UNet configs)


def trained_adapter(config=SD_LIKE, base="sd15", slots=("upper", "lower"), include_unet=True):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**config).eval()
    gnet = build_garments_net(copy.deepcopy(unet), slots=list(slots), rank=4, alpha=8)
    with torch.no_grad():
        for p in gnet.gfe.parameters():
            p.normal_(0, 0.1)
    da = install_dressing_attention(unet, projections="copy")
    with torch.no_grad():
        for p in da.projections.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    adapter = export(gnet, da, base=base, default_lambda=0.7, provenance={"trainer": "test", "steps": 3},
                     include_unet=include_unet)
    return adapter, unet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    adapter, unet = trained_adapter()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    adapter.save(str(path))
    return path, adapter, unet


def test_round_trip_keeps_every_tensor_and_the_metadata(saved):
    path, adapter, unet = saved
    loaded = load_checkpoint(str(path))
    want, got = adapter.tensors(), loaded.tensors()
    assert sorted(want) == sorted(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert loaded.meta == adapter.meta
    assert loaded.meta.slots == ["upper", "lower"] and loaded.meta.lora_rank == 4 and loaded.meta.lora_alpha == 8.0
    assert loaded.meta.provenance == {"trainer": "test", "steps": 3}
    assert any(k.startswith("garments_net.") for k in got) and any(k.startswith("gfe.input.1.0.out.") for k in got)
    loaded.check_layers(unet_channels(unet))  # fits the UNet it came from
    feats = GarmentFeatures.of({k: torch.randn(2, 5, c) for k, c in unet_channels(unet).items()}, ["upper", "lower"])
    a, b = adapter.attach(feats), loaded.attach(feats)
    for key in feats.tokens:
        like = feats.tokens[key]
        torch.testing.assert_close(garment_kv(a, key, None, None, like)[0], garment_kv(b, key, None, None, like)[0])
    assert b.form == "separate"


def test_truncated_and_garbage_files_are_named(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnyDressingError, match="truncated"):
        load_checkpoint(str(cut))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(AnyDressingError, match="junk.safetensors.*not a readable safetensors"):
        load_checkpoint(str(junk))
    with pytest.raises(AnyDressingError, match="no file"):
        load_checkpoint(str(tmp_path / "missing.safetensors"))


def _rewrite(src, dst, edit_tensors=None, edit_meta=None):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        md = dict(f.metadata())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(md)
    save_file(tensors, str(dst), metadata=md)
    return dst


def test_foreign_keys_are_listed(saved, tmp_path):
    path, _, _ = saved
    bad = _rewrite(path, tmp_path / "f.safetensors", lambda t: t.update({"model.diffusion_model.x": torch.zeros(1)}))
    with pytest.raises(AnyDressingError, match=r"model\.diffusion_model\.x"):
        load_checkpoint(str(bad))


def test_wrong_lora_shape_names_the_tensor(saved, tmp_path):
    path, _, _ = saved
    bad = _rewrite(path, tmp_path / "s.safetensors",
                   lambda t: t.update({"gfe.input.1.0.q.lora_A": torch.zeros(2, 3, 32)}))
    with pytest.raises(AnyDressingError, match=r"gfe\.input\.1\.0\.q.*\[2, 3, 32\]"):
        load_checkpoint(str(bad))


def test_metadata_problems(saved, tmp_path):
    path, _, _ = saved
    newer = _rewrite(path, tmp_path / "v.safetensors", edit_meta=lambda m: m.update({"anydressing.format_version": "9"}))
    with pytest.raises(AnyDressingError, match="format version 9"):
        load_checkpoint(str(newer))
    form = _rewrite(path, tmp_path / "m.safetensors", edit_meta=lambda m: m.update({"anydressing.form": "mixed"}))
    with pytest.raises(AnyDressingError, match="form 'mixed'"):
        load_checkpoint(str(form))
    base = _rewrite(path, tmp_path / "b.safetensors", edit_meta=lambda m: m.update({"anydressing.base": "sdxl"}))
    with pytest.raises(AnyDressingError, match="base 'sdxl' but the GarmentsNet weights are SD1.5-shaped"):
        load_checkpoint(str(base))
    none = tmp_path / "plain.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(none))
    with pytest.raises(AnyDressingError, match="not an AnyDressing checkpoint.*convert"):
        load_checkpoint(str(none))


def test_sdxl_adapter_on_sd15_model_and_the_reverse():
    xl, xl_unet = trained_adapter(XL_LIKE, base=None, include_unet=False)
    sd, sd_unet = trained_adapter(SD_LIKE, base=None, include_unet=False)
    assert (xl.meta.base, sd.meta.base) == ("sdxl", "sd15")  # inferred from the UNet config
    with pytest.raises(AnyDressingError, match=r"sdxl UNet with 28 self-attention layers.*has 4"):
        xl.check_layers(unet_channels(sd_unet))
    with pytest.raises(AnyDressingError, match=r"sd15 UNet with 4 self-attention layers.*has 28 \(SDXL\)"):
        sd.check_layers(unet_channels(xl_unet))
    wide = {k: c * 2 for k, c in unet_channels(sd_unet).items()}
    with pytest.raises(AnyDressingError, match="widths"):
        sd.check_layers(wide)


def test_slot_policy_shared_by_kind_and_error_for_unknown(saved):
    _, adapter, _ = saved
    assert adapter.slot_ids(["upper", "upper", "lower"]).tolist() == [0, 0, 1]
    with pytest.raises(AnyDressingError, match="'hat'"):
        adapter.encode_hooks(["hat"])


def test_zero_shot_adapter_has_no_weights_and_saves(tmp_path):
    meta = CheckpointMeta(layers=[("input", 1, 0), ("middle", 0, 0)], form="joint")
    path = tmp_path / "zs.safetensors"
    save_checkpoint(str(path), {}, meta)
    adapter = load_checkpoint(str(path))
    assert adapter.zero_shot and adapter.encode_hooks(["hat"]) is None
    feats = GarmentFeatures.of({("input", 1, 0): torch.randn(1, 2, 4)}, ["hat"])
    out = adapter.attach(feats)
    assert out.projections is None and out.form == "joint"
    assert json.loads(CheckpointMeta.to_strings(meta)["anydressing.layers"]) == ["input.1.0", "middle.0.0"]


def test_pickle_named_safetensors_is_recognised_by_content(tmp_path):
    import torch

    from anydressing_core.checkpoint import load_checkpoint, sniff_format
    from anydressing_core.errors import AnyDressingError

    fake = tmp_path / "looks_safe.safetensors"
    torch.save({"w": torch.zeros(2)}, fake)
    assert sniff_format(str(fake)) == "torch-zip"
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert sniff_format(str(legacy)) == "pickle"
    for path in (fake, legacy):
        try:
            load_checkpoint(str(path))
        except AnyDressingError as e:
            assert "pickled" in str(e) and "anydressing_core.convert" in str(e)
        else:
            raise AssertionError("a pickle was loaded as safetensors")
