"""Trainer in one process: config, the training model's processors, a tiny run, checkpoints, export."""

import json

import pytest
import torch

from anydressing_core.errors import AnyDressingError
from anydressing_core.train import state as ckpt
from anydressing_core.train.config import load_config
from anydressing_core.train.tiny import tiny_overrides, tiny_unet, write_dataset, write_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"model": write_model(root / "model"), "manifest": write_dataset(root / "data", count=4), "root": root}


def test_config_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("run:\n  max_steps: 7\n  batch_size: 3\noptim:\n  lr: 1e-4\n")
    cfg = load_config(str(f), ["run.max_steps=9", "optim.lr=2e-5", "model.slots=[upper, hat]"])
    assert cfg.run.max_steps == 9 and cfg.run.batch_size == 3
    assert cfg.optim.lr == pytest.approx(2e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.model.slots == ["upper", "hat"]
    assert cfg.loss.loc_weight == 0.01 and cfg.loss.texture_weight == 0.001 and cfg.loss.gtl_max_t == 350
    with pytest.raises(AnyDressingError, match="max_step"):
        load_config(None, ["run.max_step=1"])
    with pytest.raises(AnyDressingError, match="mixed_precision"):
        load_config(None, ["run.mixed_precision=fp8"])
    with pytest.raises(AnyDressingError, match="section.key=value"):
        load_config(None, ["max_steps"])


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert files
    for f in files:
        load_config(str(f))


def _model(rank=4):
    from anydressing_core.train.model import DressingTrainModel

    torch.manual_seed(0)
    unet = tiny_unet()
    plain = {k: v.clone() for k, v in unet.state_dict().items()}
    return DressingTrainModel(unet, ["upper", "lower"], rank=rank, alpha=4), plain


def _inputs(b=2, n=2):
    torch.manual_seed(1)
    return dict(noisy=torch.randn(b, 4, 8, 8), timesteps=torch.tensor([10, 500][:b]), text=torch.randn(b, 3, 16),
                garment_latents=torch.randn(b * n, 4, 8, 8), slot_ids=torch.tensor([0, 1] * b))


def test_rows_without_garments_run_the_plain_unet_exactly():
    from diffusers.models.attention_processor import AttnProcessor2_0

    model, _ = _model()
    x = _inputs()
    keep = torch.tensor([False, False])
    out = model(**x, present=torch.ones(2, 2, dtype=torch.bool), keep=keep)
    ref = model.dressing_net
    procs = ref.attn_processors
    ref.set_attn_processor(AttnProcessor2_0())
    plain = ref(x["noisy"], x["timesteps"], encoder_hidden_states=x["text"]).sample
    ref.set_attn_processor(procs)
    assert torch.allclose(out, plain, atol=1e-5)
    assert not model.ctx.maps or all(m.abs().sum() == 0 for m in model.ctx.maps.values())


def test_maps_are_per_garment_probabilities_and_padding_is_hidden():
    model, _ = _model()
    present = torch.tensor([[True, True], [True, False]])
    model(**_inputs(), present=present, keep=torch.tensor([True, True]))
    assert len(model.ctx.maps) == 4  # input.1.0, middle.0.0, output.3.0, output.4.0 of the tiny UNet
    for key, m in model.ctx.maps.items():
        assert m.shape[0] == 2 and m.shape[2] == 2
        assert torch.allclose(m.sum(-1), torch.ones_like(m[..., 0]), atol=1e-5)  # separate form: softmax over garments
        assert m[1, :, 1].abs().max() == 0  # the padded garment gets no attention


def test_gradients_reach_garmentsnet_lora_and_da_but_not_dressingnet():
    model, plain = _model()
    out = model(**_inputs(), present=torch.ones(2, 2, dtype=torch.bool), keep=torch.tensor([True, True]))
    out.pow(2).mean().backward()
    da_grads = [p.grad for p in model.da.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in da_grads)
    lora_b = [p for n, p in model.garments.gfe.named_parameters() if n.endswith("_B")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)  # B starts at 0, A gets 0 grad
    conv = model.garments.unet.conv_in.weight
    assert conv.requires_grad and conv.grad is not None
    frozen_q = model.garments.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert not frozen_q.requires_grad  # base q/k/v stay under the LoRA [paper]
    assert all(p.grad is None for p in model.dressing_net.parameters())
    assert all(torch.equal(v, plain[k]) for k, v in model.dressing_net.state_dict().items())


def test_tiny_run_checkpoints_samples_and_exports(tiny):
    from anydressing_core import checkpoint
    from anydressing_core.train.engine import Trainer

    out = tiny["root"] / "run"
    cfg = load_config(None, tiny_overrides(out, tiny["model"], tiny["manifest"])
                      + ["run.max_steps=2", "run.checkpoint_every=1", "run.keep_checkpoints=1", "run.sample_every=2"])
    tr = Trainer(cfg)
    res = tr.run()
    assert res["step"] == 2 and res["weights_agree"] and torch.isfinite(torch.tensor(res["total"]))
    done = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert done == ["step_00000002"]  # keep_checkpoints=1 pruned step 1
    state = json.loads((out / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 1
    grid = out / "samples" / "step_00000002.png"
    import cv2

    img = cv2.imread(str(grid))
    assert img.shape == (2 * 32, (2 + 2 + 2) * 32, 3)  # 2 rows: 2 garments | truth | sample | 2 maps
    assert list((out / "logs").rglob("events.out.tfevents*"))
    adapter = checkpoint.load_checkpoint(str(out / cfg.run.export_name))
    assert adapter.meta.slots == ["upper", "lower"] and adapter.garments_net is not None
    for key in tr.raw.da.keys:
        wk, wv = tr.raw.da.weights(key)
        ak, av = adapter.projections.weights(key)
        assert torch.equal(ak, wk.detach()) and torch.equal(av, wv.detach())


def test_latest_checkpoint_ignores_unfinished_ones(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    tmp = ckpt.begin(tmp_path, 5, True)
    ckpt.write_rank(tmp, 0, {"gen": torch.Generator().get_state()})
    ckpt.write_main(tmp, {"w": torch.ones(2)}, {"state": {}}, {"last_epoch": 5}, {"step": 5, "world_size": 1})
    ckpt.commit(tmp, keep=3)
    half = ckpt.begin(tmp_path, 9, True)  # killed while writing step 9
    (half / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000005"
    data = ckpt.load(ckpt.latest_checkpoint(tmp_path), 0)
    assert data["state"]["step"] == 5 and torch.equal(data["model"]["w"], torch.ones(2))
    with pytest.raises(AnyDressingError, match="same number of processes"):
        ckpt.load(ckpt.latest_checkpoint(tmp_path), 1)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, _ = _model()
        if checkpointing:
            model.garments.unet.enable_gradient_checkpointing()
            model.dressing_net.enable_gradient_checkpointing()
        model.train()
        out = model(**_inputs(), present=torch.tensor([[True, True], [True, False]]), keep=torch.tensor([True, True]))
        (out.pow(2).mean() + sum(m.mean() for m in model.ctx.maps.values())).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_maps_can_be_limited_to_coarse_layers_or_switched_off():
    model, _ = _model()
    x = dict(**_inputs(), present=torch.ones(2, 2, dtype=torch.bool), keep=torch.tensor([True, True]))
    model.ctx.maps_max_tokens = 16
    model(**x)
    assert model.ctx.maps and all(m.shape[1] <= 16 for m in model.ctx.maps.values())
    assert len(model.ctx.maps) == 1  # only the 4x4 middle block of the tiny UNet
    model.ctx.record_maps = False
    model(**x)
    assert model.ctx.maps == {}


def test_a_slot_without_a_lora_set_is_refused_before_training(tiny):
    from anydressing_core.train.engine import Trainer

    cfg = load_config(None, tiny_overrides(tiny["root"] / "noslot", tiny["model"], tiny["manifest"])
                      + ["model.slots=[upper]"])
    with pytest.raises(AnyDressingError, match=r"slot\(s\) \['lower'\]"):
        Trainer(cfg)


def test_resume_with_gradient_accumulation_is_exact_in_process(tiny):
    from anydressing_core.train.engine import Trainer

    base = tiny_overrides(tiny["root"] / "acc", tiny["model"], tiny["manifest"]) + [
        "run.grad_accum=2", "run.checkpoint_every=1", "run.keep_checkpoints=5", "run.max_steps=3"]
    full = Trainer(load_config(None, base)).run()
    tr = Trainer(load_config(None, base), resume=str(tiny["root"] / "acc" / "checkpoints" / "step_00000001"))
    assert (tr.step, tr.batches_done) == (1, 2)  # continues after 1 step = 2 micro-batches
    resumed = tr.run()
    assert resumed["step"] == 3
    assert resumed["weight_digest"] == full["weight_digest"]


def test_training_forward_equals_the_inference_processors():
    """What the trainer optimises is what diffusers_model (and the nodes) run at inference."""
    import copy

    from anydressing_core.diffusers_model import install_dressing_attention
    from anydressing_core.train.model import DressingTrainModel

    torch.manual_seed(0)
    unet = tiny_unet()
    infer_unet = copy.deepcopy(unet)
    model = DressingTrainModel(unet, ["upper", "lower"], rank=4, alpha=4)
    with torch.no_grad():  # make the trained parts differ from their initial copies
        for p in list(model.da.parameters()) + list(model.garments.gfe.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    x = _inputs(b=1)
    with torch.no_grad():
        out = model(**x, present=torch.ones(1, 2, dtype=torch.bool), keep=torch.tensor([True]))
        da = install_dressing_attention(infer_unet, projections=model.da, form="separate")
        feats = model.garments.encode(x["garment_latents"], ["upper", "lower"])
        with da.use(feats, strength=1.0):
            ref = infer_unet(x["noisy"], x["timesteps"], encoder_hidden_states=x["text"]).sample
    assert torch.allclose(out, ref, atol=1e-5)


def test_check_data_lists_bad_samples(tiny, tmp_path, capsys):
    from anydressing_core.train.__main__ import main

    lines = tiny["manifest"].read_text().splitlines()
    rec = json.loads(lines[1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    rec["person"] = str(broken)
    manifest = tiny["manifest"].parent / "check.jsonl"
    manifest.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    rc = main(["check-data", f"dataset.path={manifest}", "data.height=32", "data.width=32",
               "data.garment_height=32", "data.garment_width=32"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["samples"] == 2 and out["bad"] == 1
    assert str(broken) in next(iter(out["bad_samples"].values()))
