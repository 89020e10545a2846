"""The bad-input catalogue (docs/BAD_INPUT.md), one case per entry, through the real nodes in the real host.

Each refused input must raise AnyDressingError (a ValueError) whose message names the fix, BEFORE heavy work:
no VAE encode, no UNet forward, within a second.  Each accepted odd input must give a usable result.  After
every case the host is as before (the input MODEL's options, the loaded models, the interrupt flag), and the
last test checks that a normal run gives, bit for bit, the result it gave before the first bad input.

Case ids (B01...) are the catalogue's; keep them in step with docs/BAD_INPUT.md (a test checks it).
"""

from __future__ import annotations

import copy
import re
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import Graph, garment_image

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)
PAPER = "garments in positive only (paper)"
DOC = Path(__file__).resolve().parents[2] / "docs" / "BAD_INPUT.md"


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


def normal_run(g):
    """A plain and a dressed 1-step sample at 64x64: what every bad input must leave unchanged."""
    feats = g.features([(RED, "upper"), (BLUE, "lower", "stripes")])
    return g.sample(g.model, steps=1), g.sample(g.apply(feats), steps=1)


@pytest.fixture(scope="module")
def before(g):
    return normal_run(g)


@pytest.fixture(scope="module")
def feats(g, before):
    return g.features([(RED, "upper")])


def host_state(g):
    import comfy.model_management as mm

    return (repr(g.model.model_options), sorted(g.model.patches), repr(g.model.object_patches),
            [type(m.model).__name__ for m in mm.current_loaded_models], mm.processing_interrupted())


@pytest.fixture
def heavy(g, before, monkeypatch):
    """Counts VAE encodes and UNet forwards (heavy work) and checks the host state after the case."""
    calls = {"vae": 0, "unet": 0}
    encode = g.vae.encode

    def counting_encode(*a, **k):
        calls["vae"] += 1
        return encode(*a, **k)

    monkeypatch.setattr(g.vae, "encode", counting_encode)
    hook = g.model.model.diffusion_model.register_forward_pre_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    state = host_state(g)
    try:
        yield calls
    finally:
        hook.remove()
    assert host_state(g) == state, "a bad input changed the host's state"


def refused(heavy, fn, match):
    """``fn()`` raises AnyDressingError matching ``match`` before any heavy work (counted, not timed)."""
    with pytest.raises(ValueError) as info:
        fn()
    assert type(info.value).__name__ == "AnyDressingError", f"{type(info.value).__name__}: {info.value}"
    assert re.search(match, str(info.value), re.I), str(info.value)
    assert heavy == {"vae": 0, "unet": 0}, f"heavy work ran before the error: {heavy}"
    return str(info.value)


def garment(host, image, **kw):
    args = dict(image=image, slot="upper", weight=1.0)
    args.update(kw)
    return host.run("AnyDressingGarment", **args)[0]


def rgb(h=64, w=48):
    return garment_image(RED, size=(h, w))


# ---------------------------------------------------------------- garment pictures (AnyDressingGarment)

BAD_IMAGES = {
    "B01": ("2-channel image", lambda: rgb()[..., :2], "2 channels.*expected 1 \\(grey\\), 3 \\(RGB\\) or 4"),
    "B02": ("5-channel image", lambda: torch.cat([rgb(), rgb()[..., :2]], -1), "5 channels"),
    "B03": ("0..255 float image", lambda: rgb() * 255, "0\\.\\.255.*divide it by 255"),
    "B04": ("-1..1 image", lambda: rgb() * 2 - 1, "-1\\.\\.1.*\\(x \\+ 1\\) / 2"),
    "B05": ("NaN pixels", lambda: rgb().index_fill(1, torch.tensor([3]), float("nan")), "NaN or infinite"),
    "B06": ("infinite pixels", lambda: rgb().index_fill(2, torch.tensor([5]), float("inf")), "NaN or infinite"),
    "B07": ("1x1 image", lambda: torch.rand(1, 1, 1, 3), "1x1 pixels.*at least 16x16"),
    "B08": ("15x64 image", lambda: torch.rand(1, 15, 64, 3), "64x15 pixels.*at least 16x16"),
    "B09": ("image without batch axis", lambda: rgb()[0], "IMAGE batch \\[B, H, W, C\\]"),
    "B10": ("empty image batch", lambda: rgb()[:0], "empty batch"),
    "B11": ("not an image at all", lambda: None, "IMAGE batch"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_garment_pictures_are_refused(host, heavy, case):
    _, make, match = BAD_IMAGES[case]
    refused(heavy, lambda: garment(host, make()), match)


GOOD_IMAGES = {
    "A01": ("grey (1 channel)", lambda: rgb()[..., :1]),
    "A02": ("RGBA with transparency", lambda: torch.cat([rgb(), (rgb()[..., :1] < 0.99).float()], -1)),
    "A03": ("RGBA fully opaque", lambda: torch.cat([rgb(), torch.ones(1, 64, 48, 1)], -1)),
    "A04": ("uint8 tensor 0..255", lambda: (rgb() * 255).round().to(torch.uint8)),
    "A05": ("16x16, the smallest accepted", lambda: torch.rand(1, 16, 16, 3)),
    "A06": ("slight overshoot -0.05..1.05 (resampler ringing)", lambda: rgb() * 1.1 - 0.05),
    "A07": ("float16 image", lambda: rgb().half()),
}


@pytest.mark.parametrize("case", sorted(GOOD_IMAGES))
def test_odd_but_valid_pictures_are_accepted(host, heavy, case):
    _, make = GOOD_IMAGES[case]
    chain = garment(host, make())
    item = chain.items[-1]
    assert item.image.ndim == 3 and item.image.shape[2] == 3 and item.image.dtype.name == "float32"
    assert float(item.image.min()) >= 0 and float(item.image.max()) <= 1
    garments = host.module("anydressing_core.garments")
    picture = make()[0].float().numpy()
    if case == "A02":  # transparency is the garment mask
        _, want = garments.normalize_garment(picture[..., :3], picture[..., 3])
        assert np.array_equal(item.mask, want), "transparency should become the garment mask"
    if case == "A03":  # an opaque alpha says nothing about the garment: the automatic mask instead
        _, want = garments.normalize_garment(picture[..., :3], None)
        assert np.array_equal(item.mask, want), "an opaque alpha should give the automatic mask"


def test_huge_picture_is_downscaled_before_any_copy(host, heavy):
    """A01x: 6000x5000 float32 (343 MiB): stored at most MAX_SIDE, never copied at full size."""
    garments = host.module("anydressing_core.garments")
    big = torch.ones(1, 6000, 5000, 3)
    big[:, 1000:5000, 1000:4000] = torch.tensor(RED)
    tracemalloc.start()
    try:
        chain = garment(host, big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    item = chain.items[0]
    assert max(item.image.shape[:2]) <= garments.MAX_SIDE
    # stored cropped to the 3000x4000 garment (plus a 4% margin), after the downscale to MAX_SIDE
    assert abs(item.image.shape[1] / item.image.shape[0] - 3000 / 4000) < 0.02
    assert 4000 * garments.MAX_SIDE / 6000 <= item.image.shape[0] <= 1.1 * 4000 * garments.MAX_SIDE / 6000
    full = big.numel() * 4
    at_max_side = garments.MAX_SIDE * round(5000 * garments.MAX_SIDE / 6000) * 3 * 4  # the downscaled float picture
    assert peak < full, f"peak {peak / 2**20:.0f} MiB: the {full / 2**20:.0f} MiB picture was copied at full size"
    assert peak < 2.5 * at_max_side, (f"peak {peak / 2**20:.0f} MiB while normalising a picture of "
                                      f"{at_max_side / 2**20:.0f} MiB at the size limit")


def test_thin_huge_picture_with_its_own_mask_is_accepted(host, heavy):
    """A13: 16x20000 with its mask: the picture is downscaled to 3x4096 first; the mask still fits it and
    the garment is cropped to the masked half."""
    img = torch.full((1, 20000, 16, 3), 0.5)
    mask = torch.zeros(1, 20000, 16)
    mask[:, 5000:15000, 4:12] = 1.0
    item = garment(host, img, mask=mask).items[0]
    assert item.image.shape[:2] == item.mask.shape and item.mask.max() == 1
    assert 2048 <= item.mask.shape[0] <= 1.1 * 2048  # 10000 of 20000 rows at 4096 / 20000, plus the margin


def test_huge_picture_auto_mask_works_on_a_small_copy(host, monkeypatch):
    """A 4096 px garment on a plain background is auto-masked on a copy of at most AUTO_MASK_SIDE (the
    morphology then costs a fraction of a second, not 15 s); the mask comes back at full size."""
    garments = host.module("anydressing_core.garments")
    seen = []
    morph = garments.cv2.morphologyEx
    monkeypatch.setattr(garments.cv2, "morphologyEx", lambda a, *r, **k: seen.append(a.shape) or morph(a, *r, **k))
    img = torch.ones(4096, 3072, 3)
    img[512:-512, 512:-512] = torch.tensor(RED)
    m = garments.auto_mask(img.numpy())
    assert m.shape == (4096, 3072) and m[2048, 1536] == 1 and m[100, 100] == 0
    assert seen and max(max(shape) for shape in seen) <= garments.AUTO_MASK_SIDE, seen


# ---------------------------------------------------------------- masks, slots, weights, chains

def test_b12_empty_mask(host, heavy):
    refused(heavy, lambda: garment(host, rgb(), mask=torch.zeros(1, 64, 48)), "mask of garment 1.*empty")


def test_b13_mask_of_another_aspect(host, heavy):
    refused(heavy, lambda: garment(host, rgb(), mask=torch.ones(1, 64, 64)), "48x64.*another aspect")


def test_b14_mask_count_does_not_match_batch(host, heavy):
    refused(heavy, lambda: garment(host, rgb(), mask=torch.ones(3, 64, 48)), "3 masks for 1")


def test_b15_mask_with_nan(host, heavy):
    refused(heavy, lambda: garment(host, rgb(), mask=torch.full((1, 64, 48), float("nan"))), "mask contains NaN")


def test_full_mask_and_mask_of_another_size_are_accepted(host, heavy):
    """A08, A09: a full mask keeps the whole picture; a half-size mask of the same aspect is rescaled."""
    full = garment(host, rgb(), mask=torch.ones(1, 64, 48)).items[0]
    assert full.mask.shape == (64, 48) and full.mask.min() == 1
    half = garment(host, rgb(), mask=torch.ones(1, 32, 24)).items[0]
    assert half.mask.shape == (64, 48)
    inverted = garment(host, rgb(), mask=torch.zeros(1, 64, 48), mask_mode="black is garment (LoadImage alpha mask)")
    assert inverted.items[0].mask.min() == 1


def test_b16_unknown_slot(host, heavy):
    refused(heavy, lambda: garment(host, rgb(), slot="shirt"), "unknown slot 'shirt'.*upper, lower")


@pytest.mark.parametrize("weight", [-0.5, 4.5, float("nan")])
def test_b17_weight_out_of_range(host, heavy, weight):
    refused(heavy, lambda: garment(host, rgb(), weight=weight), "weight .* out of range; use 0..4")


def test_b18_garments_input_of_another_type(host, heavy):
    refused(heavy, lambda: garment(host, rgb(), garments=[rgb()]), "must come from another AnyDressing Garment")


def test_b19_more_than_max_garments_chained(host, heavy):
    limit = host.module("anydressing_core.garments").MAX_GARMENTS
    chain = None
    for i in range(limit):
        chain = garment(host, rgb(), **({} if chain is None else {"garments": chain}))
    assert len(chain) == limit
    refused(heavy, lambda: garment(host, rgb(), garments=chain), f"make {limit + 1}; at most {limit} garments")


def test_b20_batch_larger_than_max_refused_before_preprocessing(host, heavy, monkeypatch):
    node = host.module("nodes.garment")
    seen = []
    monkeypatch.setattr(node, "normalize_garment", lambda *a, **k: seen.append(1))
    refused(heavy, lambda: garment(host, torch.rand(40, 64, 48, 3)), "batch of 40 pictures.*at most 8")
    assert not seen, "pictures were preprocessed before the count was checked"


# ---------------------------------------------------------------- Encode Garments

def encode(host, g, **kw):
    args = dict(model=g.model, vae=g.vae, garments=garment(host, rgb()), width=64, height=64)
    args.update(kw)
    return host.run("AnyDressingEncodeGarments", **args)[0]


def test_b21_zero_garments(host, g, heavy):
    garments = host.module("anydressing_core.garments")
    refused(heavy, lambda: encode(host, g, garments=garments.GarmentList()), "no garments: connect at least one")
    refused(heavy, lambda: encode(host, g, garments=None), "no garments")


@pytest.mark.parametrize("size", [(100, 64), (64, 0), (4096, 64)])
def test_b22_encode_size_out_of_range(host, g, heavy, size):
    refused(heavy, lambda: encode(host, g, width=size[0], height=size[1]), "multiples of 64 from 64 to 2048")


def test_b23_vae_input_is_not_a_vae(host, g, heavy):
    refused(heavy, lambda: encode(host, g, vae=g.model), "vae input is not a ComfyUI VAE.*connect a VAE")


def test_b24_vae_with_another_latent_channel_count(host, g, heavy):
    vae16 = copy.copy(g.vae)
    vae16.latent_channels = 16  # e.g. an SD3/Flux VAE
    refused(heavy, lambda: encode(host, g, vae=vae16), "16-channel latents but the model expects 4.*VAE that belongs")


def test_b25_model_input_is_not_a_model(host, g, heavy):
    refused(heavy, lambda: encode(host, g, model=g.vae), "not a ComfyUI MODEL.*Connect the MODEL output")
    refused(heavy, lambda: encode(host, g, model=g.clip), "not a ComfyUI MODEL")


class FakePatcher:
    """A MODEL-like object whose diffusion model is ``inner`` (a DiT, an empty UNet, ...)."""

    def __init__(self, inner, latent_channels=4):
        self.model = types.SimpleNamespace(diffusion_model=inner,
                                           latent_format=types.SimpleNamespace(latent_channels=latent_channels))
        self.model_options = {"transformer_options": {}}

    def clone(self):
        return self


class TinyDiT(torch.nn.Module):
    """Stands in for a transformer-only diffusion model (Flux/SD3 style): blocks, no input/output_blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8)])


def test_b26_model_whose_diffusion_model_is_not_a_unet(host, g, heavy):
    refused(heavy, lambda: encode(host, g, model=FakePatcher(TinyDiT())), "TinyDiT, not a UNet.*SD1.5")


def test_b27_unet_without_self_attention(host, g, heavy):
    empty = torch.nn.Module()
    empty.input_blocks, empty.output_blocks = torch.nn.ModuleList(), torch.nn.ModuleList()
    refused(heavy, lambda: encode(host, g, model=FakePatcher(empty)), "no self-attention layers")


def test_b28_model_with_another_latent_channel_count(host, g, heavy):
    """An SD1.5-shaped UNet that expects 16-channel latents, with the 4-channel SD1.5 VAE."""
    inner = copy.copy(g.model.model)
    inner.latent_format = types.SimpleNamespace(latent_channels=16)
    other = copy.copy(g.model)
    other.model = inner
    refused(heavy, lambda: encode(host, g, model=other), "4-channel latents but the model expects 16")


def test_many_garments_up_to_the_limit_work(host, g, before):
    """A10: MAX_GARMENTS garments encode and sample (finite) at 64x64."""
    limit = host.module("anydressing_core.garments").MAX_GARMENTS
    chain = None
    for i in range(limit):
        img = garment_image(((i * 37 % 100) / 100, 0.2, 1 - i / limit))
        chain = garment(host, img, **({} if chain is None else {"garments": chain}))
    feats = encode(host, g, garments=chain)
    assert feats.count == limit
    out = g.sample(g.apply(feats), steps=1)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- Apply AnyDressing

def apply(host, g, feats, **kw):
    args = dict(model=g.model, features=feats, strength=0.7, start_percent=0.0, end_percent=1.0, form="auto",
                cfg_policy=PAPER)
    args.update(kw)
    return host.run("AnyDressingApply", **args)[0]


@pytest.mark.parametrize("strength", [-0.1, 2.5, float("nan"), float("inf")])
def test_b29_strength_out_of_range(host, g, feats, heavy, strength):
    refused(heavy, lambda: apply(host, g, feats, strength=strength), "strength .* out of range; use 0..2")


@pytest.mark.parametrize("start,end", [(-0.1, 1.0), (0.0, 1.5), (0.8, 0.2), (float("nan"), 1.0)])
def test_b30_percent_out_of_range(host, g, feats, heavy, start, end):
    refused(heavy, lambda: apply(host, g, feats, start_percent=start, end_percent=end), "both must be in 0..1 and start <= end")


def test_b31_unknown_form_and_cfg_policy(host, g, feats, heavy):
    refused(heavy, lambda: apply(host, g, feats, form="both"), "unknown form 'both'.*auto")
    refused(heavy, lambda: apply(host, g, feats, cfg_policy="none"), "unknown cfg_policy")


def test_b32_features_of_another_type(host, g, heavy):
    refused(heavy, lambda: apply(host, g, {"tokens": {}}), "must come from AnyDressing Encode Garments")


def test_b33_features_from_a_unet_of_another_shape(host, g, feats, heavy):
    GF = type(feats)
    missing = GF.of({k: v for k, v in list(feats.tokens.items())[:2]}, feats.slots, feats.weights)
    refused(heavy, lambda: apply(host, g, missing), "another shape.*have no features.*same base architecture")
    extra = GF.of({**feats.tokens, ("output", 99, 0): next(iter(feats.tokens.values()))}, feats.slots, feats.weights)
    refused(heavy, lambda: apply(host, g, extra), "layers \\['output.99.0'\\] that this model lacks")
    wide = GF.of({k: torch.zeros(1, 4, 640) for k in feats.tokens}, feats.slots, feats.weights)
    refused(heavy, lambda: apply(host, g, wide), "expects 320 channels but the garment features have 640")


def test_b34_apply_to_something_that_is_not_a_unet(host, g, feats, heavy):
    refused(heavy, lambda: apply(host, g, feats, model=FakePatcher(TinyDiT())), "not a UNet")
    refused(heavy, lambda: apply(host, g, feats, model=g.vae), "not a ComfyUI MODEL")


def test_b35_region_masks_of_the_wrong_count_shape_or_values(host, g, feats, heavy):
    refused(heavy, lambda: apply(host, g, feats, region_masks=torch.ones(2, 64, 64)), "2 masks for 1 garments")
    refused(heavy, lambda: apply(host, g, feats, region_masks=torch.ones(1, 1, 64, 64)), "MASK \\[N, H, W\\]")
    refused(heavy, lambda: apply(host, g, feats, region_masks=torch.full((1, 64, 64), float("nan"))), "NaN")


def test_region_masks_of_another_size_and_empty_or_full_are_accepted(host, g, feats):
    """A11: regions of any size are resized to each layer; an empty region means 'everywhere'."""
    for regions in (torch.ones(1, 37, 91), torch.zeros(1, 64, 64), torch.ones(64, 64)):
        out = g.sample(apply(host, g, feats, form="separate", region_masks=regions), steps=1)
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------- Attention Maps

def maps(host, g, model, **kw):
    args = dict(model=model, positive=g.pos, latent={"samples": torch.zeros(1, 4, 8, 8)}, at_percent=0.5, seed=0)
    args.update(kw)
    return host.run("AnyDressingAttentionMaps", **args)


def test_b36_maps_of_an_unpatched_model(host, g, heavy):
    refused(heavy, lambda: maps(host, g, g.model), "carries no AnyDressing patch.*AnyDressing Apply")


def test_b37_maps_bad_latent_and_percent(host, g, feats, heavy):
    patched = apply(host, g, feats, start_percent=0.0, end_percent=0.4)
    refused(heavy, lambda: maps(host, g, patched, at_percent=2.0), "at_percent 2.0 is out of range")
    refused(heavy, lambda: maps(host, g, patched, latent=torch.zeros(1, 4, 8, 8)), "must be a LATENT")
    refused(heavy, lambda: maps(host, g, patched, latent={"samples": torch.zeros(1, 16, 8, 8)}), "takes 4-channel latents")
    refused(heavy, lambda: maps(host, g, patched, at_percent=0.9), "outside the AnyDressing Apply node's start/end range")


# ---------------------------------------------------------------- the host stays usable

def test_zz_normal_run_after_all_bad_inputs_is_unchanged(g, before):
    """Runs last in this module: after every case above, the same graph gives the same bits."""
    plain, dressed = normal_run(g)
    assert torch.equal(plain, before[0]), "the plain sample changed after the bad inputs"
    assert torch.equal(dressed, before[1]), "the dressed sample changed after the bad inputs"


def test_catalogue_lists_every_case():
    """Every case id used here appears in docs/BAD_INPUT.md."""
    text = DOC.read_text()
    ids = set(BAD_IMAGES) | set(GOOD_IMAGES) | set(BAD_FILES) | {f"B{i:02d}" for i in range(12, 53)} | {"A12", "A13"}
    missing = sorted(i for i in ids if i not in text)
    assert not missing, f"docs/BAD_INPUT.md lacks {missing}"


# ---------------------------------------------------------------- Load AnyDressing Weights (weight files)

class Evil:
    """Unpickling this runs ``os.mkdir(marker)``: the proof that a loader executed code from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def weights(host, g, tmp_path_factory):
    """A folder registered as models/anydressing holding one valid file and every kind of bad one; a valid file
    OUTSIDE it (for path traversal); the marker an executed pickle would create."""
    import struct

    ckpt = host.module("anydressing_core.checkpoint")
    common = host.module("nodes.common")
    root = tmp_path_factory.mktemp("weights")
    folder = root / "anydressing"
    folder.mkdir()
    layers = common.attn1_modules(g.model.model.diffusion_model)
    tensors = {}
    for key, module in layers.items():
        c = module.to_k.in_features
        s = f"{key[0]}.{key[1]}.{key[2]}"
        tensors[f"da.{s}.to_k"] = torch.eye(c)
        tensors[f"da.{s}.to_v"] = torch.eye(c)
    meta = ckpt.CheckpointMeta(base="sd15", layers=list(layers))
    ckpt.save_checkpoint(str(folder / "valid.safetensors"), tensors, meta)
    ckpt.save_checkpoint(str(root / "outside.safetensors"), tensors, meta)
    data = (folder / "valid.safetensors").read_bytes()
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "header_only.safetensors").write_bytes(data[: 8 + struct.unpack("<Q", data[:8])[0]])
    (folder / "random.safetensors").write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    (folder / "huge_header.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    flipped = bytearray(data)
    flipped[8:40] = b"#" * 32  # the JSON header, corrupted
    (folder / "corrupted_header.safetensors").write_bytes(bytes(flipped))
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(4, 4)}, str(folder / "foreign.safetensors"))
    save_file(tensors, str(folder / "newer.safetensors"), metadata={**meta.to_strings(), "anydressing.format_version": "999"})
    marker = root / "PWNED"
    torch.save({"w": torch.zeros(2), "x": Evil(marker)}, str(folder / "pickle_renamed.safetensors"))
    torch.save({"w": torch.zeros(2), "x": Evil(marker)}, str(folder / "evil.pth"))
    (folder / "sd15_checkpoint.safetensors").symlink_to(Path(host.folder_paths.get_full_path("checkpoints", g.names["checkpoint"])))
    host.folder_paths.add_model_folder_path("anydressing", str(folder))
    return {"folder": folder, "root": root, "marker": marker}


@pytest.fixture
def loads(host, monkeypatch):
    """Spies on the heavy part of loading: full tensor reads and ComfyUI UNet construction."""
    import comfy.sd

    ckpt = host.module("anydressing_core.checkpoint")
    seen = {"tensors": 0, "unet": 0}
    read = ckpt.read_safetensors

    def spy_read(path, load=True):
        seen["tensors"] += bool(load)
        return read(path, load)

    build = comfy.sd.load_diffusion_model_state_dict

    def spy_build(*a, **k):
        seen["unet"] += 1
        return build(*a, **k)

    monkeypatch.setattr(ckpt, "read_safetensors", spy_read)
    monkeypatch.setattr(comfy.sd, "load_diffusion_model_state_dict", spy_build)
    return seen


def load(host, name, model=None):
    return host.run("AnyDressingLoader", anydressing_name=name, **({} if model is None else {"model": model}))


BAD_FILES = {
    "B38": ("empty file (0 bytes)", "empty.safetensors", "empty.safetensors \\(0 bytes\\) is not a readable safetensors"),
    "B39": ("truncated file (first half)", "truncated.safetensors", "truncated.safetensors .* truncated, corrupted"),
    "B40": ("header without the tensor data", "header_only.safetensors", "not a readable safetensors"),
    "B41": ("random bytes", "random.safetensors", "not a readable safetensors"),
    "B42": ("header length of 1 TiB", "huge_header.safetensors", "not a readable safetensors"),
    "B43": ("corrupted JSON header", "corrupted_header.safetensors", "not a readable safetensors"),
    "B44": ("foreign safetensors (unknown keys)", "foreign.safetensors", "not an AnyDressing checkpoint.*convert"),
    "B45": ("a full SD1.5 checkpoint in the wrong folder", "sd15_checkpoint.safetensors", "not an AnyDressing checkpoint"),
    "B46": ("a newer format version", "newer.safetensors", "format version 999; this pack reads up to .*Update"),
    "B47": ("a pickle renamed .safetensors (would run code)", "pickle_renamed.safetensors", "pickled torch file.*never loaded directly.*anydressing_core.convert"),
    "B48": ("a .pth pickle asked for by name (would run code)", "evil.pth", "pickled torch file.*never loaded directly.*anydressing_core.convert"),
    "B49": ("a name that is not there", "missing.safetensors", "'missing.safetensors' is not in any anydressing folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_weight_files_are_refused_before_loading(host, g, heavy, weights, loads, case):
    _, name, match = BAD_FILES[case]
    refused(heavy, lambda: load(host, name, model=g.model), match)
    assert loads == {"tensors": 0, "unet": 0}, f"tensors were read or a UNet was built before the error: {loads}"
    assert not weights["marker"].exists(), "loading a weight file executed code"


TRAVERSAL = ["../outside.safetensors", "../../anydressing/../outside.safetensors", "sub/../../outside.safetensors",
             "{root}/outside.safetensors", "..\\outside.safetensors", "%2e%2e/outside.safetensors"]


@pytest.mark.parametrize("pattern", TRAVERSAL)
def test_b50_model_names_with_path_traversal_stay_in_the_folder(host, g, heavy, weights, loads, pattern):
    """A valid checkpoint sits next to the models folder; no name reaches it (ComfyUI's get_full_path confines
    names to the registered folders; the loader takes nothing else)."""
    name = pattern.format(root=weights["root"])
    refused(heavy, lambda: load(host, name, model=g.model), "is not in any anydressing folder")
    assert loads == {"tensors": 0, "unet": 0}


def test_valid_weight_file_still_loads_after_the_bad_ones(host, g, weights):
    """A12: the host is usable: the valid file loads and its adapter takes part in a run."""
    garments_net, adapter = load(host, "valid.safetensors", model=g.model)
    assert garments_net.model is g.model.model
    feats = host.run("AnyDressingEncodeGarments", model=garments_net, vae=g.vae, garments=garment(host, rgb()),
                     width=64, height=64, adapter=adapter)[0]
    assert feats.projections is adapter.projections  # K'/V' come from the file's weights, once per run
    out = g.sample(host.run("AnyDressingApply", model=g.model, features=feats, strength=0.7, start_percent=0.0,
                            end_percent=1.0, form="auto", cfg_policy=PAPER, adapter=adapter)[0], steps=1)
    assert torch.isfinite(out).all()
    assert not weights["marker"].exists()


def _foreign_adapter(host, folder):
    """An SD1.5 adapter made for another layer layout (3 layers, 640 wide): loadable, but fits no tiny SD1.5."""
    ckpt = host.module("anydressing_core.checkpoint")
    layers = [("input", 4, 0), ("input", 4, 1), ("middle", 0, 0)]
    tensors = {}
    for k in layers:
        s = f"{k[0]}.{k[1]}.{k[2]}"
        tensors[f"da.{s}.to_k"] = torch.zeros(640, 640)
        tensors[f"da.{s}.to_v"] = torch.zeros(640, 640)
    path = folder / "xl_adapter.safetensors"
    ckpt.save_checkpoint(str(path), tensors, ckpt.CheckpointMeta(base="sd15", layers=layers))
    return ckpt.load_checkpoint(str(path))


def test_b51_adapter_of_another_architecture_is_refused_before_encoding(host, g, heavy, tmp_path):
    adapter = _foreign_adapter(host, tmp_path)
    refused(heavy, lambda: encode(host, g, adapter=adapter), "self-attention layers")
    refused(heavy, lambda: encode(host, g, adapter="weights.safetensors"), "must come from AnyDressing Loader")


def test_b52_adapter_of_another_architecture_is_refused_by_apply(host, g, feats, heavy, tmp_path):
    adapter = _foreign_adapter(host, tmp_path)
    refused(heavy, lambda: apply(host, g, feats, adapter=adapter), "self-attention layers")
