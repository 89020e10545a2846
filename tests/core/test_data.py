"""Data: manifest / DressCode / VITON-HD readers, triplets, aligned augmentation, bad samples, sampler."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anydressing_core.data import (DataConfig, DressingDataset, ResumableSampler, collate, layer_masks,
                                   read_dresscode, read_manifest, read_vitonhd)
from anydressing_core.data.augment import AugmentConfig
from anydressing_core.errors import AnyDressingError
from anydressing_core.garments import SLOTS
from anydressing_core.train.tiny import write_dataset

S = 32


def cfg(**aug):
    return DataConfig(height=S, width=S, garment_height=S, garment_width=S,
                      augment=AugmentConfig(**aug) if aug else AugmentConfig(enabled=False))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), count=4, size=S)


def test_manifest_reads_every_sample_with_slots_and_masks(manifest):
    recs = read_manifest(manifest)
    assert len(recs) == 4
    assert [g.slot for g in recs[0].garments] == ["upper", "lower"]
    assert [g.slot for g in recs[1].garments] == ["upper"]
    assert recs[0].garments[0].mask.is_file() and recs[0].garments[0].garment_mask.is_file()


def test_bad_manifest_lines_are_reported_with_line_numbers(tmp_path, manifest, caplog):
    lines = manifest.read_text().splitlines()
    bad = [lines[0], "{not json", json.dumps({"person": "persons/000.png", "garments": [{"slot": "scarf"}]}),
           json.dumps({"person": "persons/missing.png", "caption": "", "garments": json.loads(lines[0])["garments"]})]
    path = manifest.parent / "bad.jsonl"
    path.write_text("\n".join(bad) + "\n")
    with caplog.at_level(logging.WARNING):
        recs = read_manifest(path)
    assert len(recs) == 1
    text = caplog.text
    assert f"{path}:2" in text and f"{path}:3" in text and "scarf" in text and "missing.png" in text
    with pytest.raises(AnyDressingError, match="no usable sample"):
        (tmp_path / "empty.jsonl").write_text("{}\n")
        read_manifest(tmp_path / "empty.jsonl")


def test_items_have_aligned_shapes_and_ranges(manifest):
    ds = DressingDataset(read_manifest(manifest), cfg())
    it = ds[0]
    assert it["person"].shape == (3, S, S) and it["garments"].shape == (2, 3, S, S)
    assert it["masks"].shape == (2, S, S) and it["edges"].shape == (1, S, S)
    assert it["slots"].tolist() == [SLOTS.index("upper"), SLOTS.index("lower")]
    assert -1 <= it["person"].min() and it["person"].max() <= 1
    # the mask marks the garment: coloured inside, white background outside
    dark = (it["person"] < 0.99).any(0).float()
    assert (dark * it["masks"][0]).sum() == it["masks"][0].sum()
    assert it["edges"].sum() > 0  # striped garments have Canny edges


def test_flip_moves_person_masks_and_garments_together(manifest):
    recs = read_manifest(manifest)
    plain = DressingDataset(recs, cfg())[0]
    flipped = DressingDataset(recs, cfg(hflip=1.0, scale=0.0, shift=0.0))[0]
    assert torch.allclose(flipped["person"], plain["person"].flip(-1), atol=1e-5)
    assert torch.allclose(flipped["masks"], plain["masks"].flip(-1), atol=1e-5)
    assert torch.allclose(flipped["garments"], plain["garments"].flip(-1), atol=1e-5)


def test_augmentation_is_deterministic_per_seed_epoch_and_index(manifest):
    recs = read_manifest(manifest)
    a, b = DressingDataset(recs, cfg(scale=0.2, shift=0.1), seed=5), DressingDataset(recs, cfg(scale=0.2, shift=0.1), seed=5)
    assert torch.equal(a[1]["person"], b[1]["person"])
    b.set_epoch(1)
    assert not torch.equal(a[1]["person"], b[1]["person"])
    # shifted masks still sit on the garment pixels
    it = b[1]
    dark = (it["person"] < 0.9).any(0).float()
    inside = (it["masks"][0] > 0.99).float()
    assert (dark * inside).sum() == inside.sum()


def test_unreadable_sample_is_reported_and_replaced(tmp_path, manifest, caplog):
    recs = read_manifest(manifest)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    recs[0].person = broken
    ds = DressingDataset(recs, cfg())
    with caplog.at_level(logging.WARNING):
        it = ds[0]
    assert it["index"] == 1
    assert str(broken) in caplog.text and 0 in ds.bad


def test_empty_in_shop_mask_is_a_bad_sample(tmp_path, manifest, caplog):
    recs = read_manifest(manifest)
    empty = tmp_path / "empty_mask.png"
    cv2.imwrite(str(empty), np.zeros((S, S), np.uint8))
    recs[2].garments[0].mask = empty
    ds = DressingDataset(recs, cfg())
    with caplog.at_level(logging.WARNING):
        assert ds[2]["index"] == 3
    assert "min_crop_fraction" in caplog.text


def test_collate_pads_garments_and_marks_presence(manifest):
    ds = DressingDataset(read_manifest(manifest), cfg())
    b = collate([ds[0], ds[1]])
    assert b["garments"].shape == (2, 2, 3, S, S)
    assert b["present"].tolist() == [[True, True], [True, False]]
    assert b["masks"][1, 1].abs().sum() == 0 and b["captions"][1] == "a person wearing a top"


def test_layer_masks_at_every_da_resolution(manifest):
    ds = DressingDataset(read_manifest(manifest), cfg())
    b = collate([ds[0], ds[1]])
    out = layer_masks(b["masks"], (8, 8), [64, 16, 16, 4])
    assert sorted(out) == [4, 16, 64]
    assert out[64].shape == (2, 64, 2) and out[4].shape == (2, 4, 2)
    # area resizing keeps the garment's share of the image
    assert out[16][0, :, 0].mean().item() == pytest.approx(b["masks"][0, 0].mean().item(), abs=1e-5)


def _person_with_parse(labels_by_box):
    person = np.full((S, S, 3), 255, np.uint8)
    parse = np.zeros((S, S), np.uint8)
    for label, (y0, y1, x0, x1), colour in labels_by_box:
        parse[y0:y1, x0:x1] = label
        person[y0:y1, x0:x1] = colour
    return person, parse


def test_dresscode_triplets_crop_the_other_garment_and_hats(tmp_path):
    boxes = [(1, (0, 4, 12, 20), (200, 0, 0)), (4, (6, 16, 8, 24), (0, 200, 0)), (6, (16, 30, 8, 24), (0, 0, 200))]
    for cat in ("upper_body", "lower_body"):
        d = tmp_path / cat
        (d / "images").mkdir(parents=True)
        (d / "label_maps").mkdir()
        person, parse = _person_with_parse(boxes)
        cv2.imwrite(str(d / "images" / "000001_0.jpg"), person[..., ::-1])
        garment = np.full((S, S, 3), 255, np.uint8)
        garment[8:24, 8:24] = (50, 50, 50)
        cv2.imwrite(str(d / "images" / "000001_1.jpg"), garment)
        Image.fromarray(parse).save(d / "label_maps" / "000001_4.png")
        (d / "train_pairs.txt").write_text("000001_0.jpg 000001_1.jpg\n")
    recs = read_dresscode(tmp_path, categories=["upper_body", "lower_body"])
    assert [[g.slot for g in r.garments] for r in recs] == [["upper", "lower", "hat"], ["lower", "upper", "hat"]]
    assert not recs[0].garments[0].cropped and recs[0].garments[1].cropped
    ds = DressingDataset(recs, cfg())
    it = ds[0]
    assert [SLOTS[i] for i in it["slots"]] == ["upper", "lower", "hat"]
    assert it["masks"][0].sum().item() == pytest.approx(10 * 16, abs=1)   # label 4 box
    assert it["masks"][1].sum().item() == pytest.approx(14 * 16, abs=1)   # label 6 box
    # the cropped lower garment is the photo's blue region on a white background
    g = (it["garments"][1] + 1) / 2
    assert (g[2] > g[0] + 0.3).float().mean() > 0.3
    assert "wearing" in recs[0].caption


def test_vitonhd_reads_palette_parse_and_drops_absent_garments(tmp_path):
    d = tmp_path / "train"
    for sub in ("image", "cloth", "cloth-mask", "image-parse-v3"):
        (d / sub).mkdir(parents=True)
    person, parse = _person_with_parse([(5, (6, 16, 8, 24), (0, 200, 0)), (9, (16, 30, 8, 24), (0, 0, 200))])
    cv2.imwrite(str(d / "image" / "00001_00.jpg"), person[..., ::-1])
    cv2.imwrite(str(d / "cloth" / "00001_00.jpg"), np.full((S, S, 3), 90, np.uint8))
    cm = np.zeros((S, S), np.uint8)
    cm[4:28, 4:28] = 255
    cv2.imwrite(str(d / "cloth-mask" / "00001_00.jpg"), cm)
    im = Image.fromarray(parse, mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    im.save(d / "image-parse-v3" / "00001_00.png")
    (tmp_path / "train_pairs.txt").write_text("00001_00.jpg 00001_00.jpg\n")
    recs = read_vitonhd(tmp_path)
    assert [g.slot for g in recs[0].garments] == ["upper", "lower", "hat"]
    it = DressingDataset(recs, cfg())[0]
    assert [SLOTS[i] for i in it["slots"]] == ["upper", "lower"]  # no hat pixels: dropped
    assert it["masks"][1].sum().item() == pytest.approx(14 * 16, abs=1)
    with pytest.raises(AnyDressingError, match="image does not exist"):
        read_vitonhd(tmp_path / "nowhere")


def test_synthetic_generator_manifest_is_readable(tmp_path):
    from anydressing_core import synthetic

    synthetic.write_dataset(str(tmp_path), synthetic.MIN_COUNT, size=32, seed=0)
    recs = read_manifest(tmp_path / "train.jsonl")
    it = DressingDataset(recs[:2], cfg())[0]
    assert it["garments"].shape[0] == len(recs[0].garments)


def test_sampler_shards_disjointly_and_resumes_mid_epoch():
    shards = [list(ResumableSampler(10, 2, replicas=2, rank=r, seed=1)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6  # 10 padded to 12
    assert sorted(set(shards[0][:4]) | set(shards[1][:4])) == sorted(set(shards[0][:4] + shards[1][:4]))
    assert set(shards[0]) | set(shards[1]) == set(range(10))
    s = ResumableSampler(10, 2, replicas=2, rank=0, seed=1)
    s.start(0, 1)
    assert list(s) == shards[0][2:]
    s.start(1)
    assert list(s) != shards[0]  # a new epoch, a new order
