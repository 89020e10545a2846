"""The paper's metrics: arithmetic on known vectors, tiny random CLIP from a config, no downloads."""

import json

import cv2
import numpy as np
import pytest
import torch

from anydressing_core.errors import AnyDressingError
from anydressing_core.metrics import (AestheticHead, ClipScorer, clip_i_star_from, cosine, crop_square, mask_region,
                                      pose_region, score_records)
from anydressing_core.metrics.__main__ import main as metrics_main
from anydressing_core.metrics.aesthetic import convert_pickle, load_aesthetic
from anydressing_core.synthetic import render_sample


def test_cosine_and_clip_i_star_on_known_vectors():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0], [4.0, -3.0]])
    assert torch.allclose(cosine(a, b), torch.tensor([1.0, 0.0, 0.0]))
    assert clip_i_star_from(a, b).item() == pytest.approx(1 / 3)
    assert clip_i_star_from(a, b, torch.tensor([True, False, False])).item() == pytest.approx(1.0)
    assert torch.isnan(clip_i_star_from(a, b, torch.tensor([False, False, False])))


def test_aesthetic_heads_on_known_vectors(tmp_path):
    # linear head: score = w . normalize(x) + b
    lin = AestheticHead.from_state_dict({"weight": torch.tensor([[3.0, 4.0]]), "bias": torch.tensor([1.0])})
    assert lin(torch.tensor([[10.0, 0.0], [0.0, 0.5]])).tolist() == pytest.approx([4.0, 5.0])
    # LAION MLP layout: linear layers chained with no activation
    sd = {"layers.0.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), "layers.0.bias": torch.zeros(3),
          "layers.2.weight": torch.tensor([[1.0, 2.0, 3.0]]), "layers.2.bias": torch.tensor([0.5])}
    mlp = AestheticHead.from_state_dict(sd)
    # x = (0.6, 0.8): h = (0.6, 0.8, 1.4); score = 0.6 + 1.6 + 4.2 + 0.5
    assert mlp(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(6.9)
    with pytest.raises(AnyDressingError, match="2-d CLIP embeddings"):
        mlp(torch.zeros(1, 5))
    with pytest.raises(AnyDressingError, match="not an aesthetic head"):
        AestheticHead.from_state_dict({"foo": torch.zeros(1)})
    pth, st = tmp_path / "head.pth", tmp_path / "head.safetensors"
    torch.save(sd, pth)
    assert convert_pickle(str(pth), str(st)) == 4
    assert load_aesthetic(str(st))(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(6.9)
    with pytest.raises(AnyDressingError, match="convert it first"):
        load_aesthetic(str(pth))


def test_regions_from_masks_and_pose():
    m = np.zeros((20, 30))
    m[5:10, 10:20] = 1
    assert mask_region(m, margin=0.0) == (10, 5, 20, 10)
    assert mask_region(np.zeros((4, 4))) is None
    s = render_sample(0, 64, seed=0, slots=("upper", "lower", "hat"))
    for g in s.garments:
        box = pose_region(s.keypoints, g.spec.slot, 64, 64)
        ys, xs = np.nonzero(g.mask)
        inside = ((xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])).mean()
        assert inside > 0.8, f"{g.spec.slot} region {box} holds only {inside:.0%} of the garment"
    kp = np.concatenate([s.keypoints, np.zeros((17, 1))], 1)  # all confidences 0: nothing found
    assert pose_region(kp, "upper", 64, 64) is None
    with pytest.raises(AnyDressingError, match="COCO-17"):
        pose_region(np.zeros((5, 2)), "upper", 64, 64)
    sq = crop_square(np.zeros((20, 30, 3), np.uint8), (0, 0, 30, 10))
    assert sq.shape == (30, 30, 3) and sq[0, 0, 0] == 255 and sq[15, 15, 0] == 0


class WordTokenizer:
    """Stand-in for CLIPTokenizer: one id per character (the arithmetic is what is tested)."""

    def __call__(self, texts, padding=True, truncation=True, return_tensors="pt", max_length=16):
        n = max(len(t) for t in texts) + 2
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            row = [1] + [3 + (ord(c) % 90) for c in t] + [2]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return {"input_ids": ids[:, :max_length], "attention_mask": mask[:, :max_length]}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).save_pretrained(str(path))
    scorer = ClipScorer.from_path(str(path))  # local folder, no tokenizer files there
    scorer.tokenizer = WordTokenizer()
    return scorer, str(path)


def test_scores_match_the_model_embeddings(tiny_clip):
    scorer, _ = tiny_clip
    s = render_sample(1, 64, seed=0, slots=("upper", "lower"))
    img, gar = s.person, [g.image for g in s.garments]
    px = scorer.preprocess([img])
    assert px.shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = scorer.model.get_image_features(pixel_values=px)
        e_img = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert torch.allclose(scorer.image_embeds([img]), e_img, atol=1e-6)
    e_txt = scorer.text_embeds(["red top"])
    assert scorer.clip_t([img], ["red top"]).item() == pytest.approx(cosine(e_img, e_txt).item(), abs=1e-6)
    e_g = scorer.image_embeds(gar)
    assert scorer.clip_i(img, gar).item() == pytest.approx(cosine(e_img.expand(2, -1), e_g).mean().item(), abs=1e-6)
    boxes = [mask_region(g.mask) for g in s.garments]
    e_r = scorer.image_embeds([crop_square(img, b) for b in boxes])
    assert scorer.clip_i_star(img, gar, boxes).item() == pytest.approx(cosine(e_r, e_g).mean().item(), abs=1e-6)
    assert scorer.clip_i_star(img, gar, [boxes[0], None]).item() == pytest.approx(cosine(e_r[:1], e_g[:1]).item(), abs=1e-6)
    # a garment compared with itself scores 1
    assert scorer.clip_i(gar[0], [gar[0]]).item() == pytest.approx(1.0, abs=1e-5)


def test_manifest_scoring_and_cli(tiny_clip, tmp_path, capsys):
    scorer, path = tiny_clip
    s = render_sample(2, 64, seed=0, slots=("upper", "lower"))
    cv2.imwrite(str(tmp_path / "gen.png"), s.person[..., ::-1])
    rec = {"person": "gen.png", "caption": s.caption, "keypoints": s.keypoints.tolist(), "garments": []}
    for g in s.garments:
        cv2.imwrite(str(tmp_path / f"{g.spec.slot}.png"), g.image[..., ::-1])
        cv2.imwrite(str(tmp_path / f"{g.spec.slot}_m.png"), g.mask.astype(np.uint8) * 255)
        rec["garments"].append({"slot": g.spec.slot, "image": f"{g.spec.slot}.png", "mask": f"{g.spec.slot}_m.png"})
    head = AestheticHead.from_state_dict({"weight": torch.ones(1, 8), "bias": torch.zeros(1)})
    res = score_records(scorer, [rec], str(tmp_path), head)
    row = res["rows"][0]
    assert set(row) >= {"clip_t", "clip_i", "clip_i_star", "clip_as"}
    assert -1 <= row["clip_i_star"] <= 1 and res["summary"]["clip_i"]["n"] == 1
    no_mask = dict(rec, garments=[{k: v for k, v in g.items() if k != "mask"} for g in rec["garments"]])
    assert "clip_i_star" in score_records(scorer, [no_mask], str(tmp_path))["rows"][0]  # pose regions
    (tmp_path / "m.jsonl").write_text(json.dumps(rec) + "\n")
    assert metrics_main(["--clip", path, "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o.json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clip_i"]["mean"] == pytest.approx(row["clip_i"], abs=1e-6)
    assert "clip_t" not in summary  # the saved folder has no tokenizer: CLIP-T is skipped, not faked


def test_missing_model_folder_says_what_to_do(tmp_path):
    with pytest.raises(AnyDressingError, match="nothing is downloaded"):
        ClipScorer.from_path(str(tmp_path / "nope"))
