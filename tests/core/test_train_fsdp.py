"""FSDP (``run.strategy=fsdp``) as users launch it: 2 processes over gloo, SIGKILL + --resume of the
sharded state, conversion from a DDP checkpoint, a damaged checkpoint, two torchrun "nodes".

Each launch starts real processes on the tiny model (tens of seconds on shared cores).  Helpers
are test_train_dist.py's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from anydressing_core.errors import AnyDressingError
from anydressing_core.train import state as ckpt
from anydressing_core.train.config import load_config
from anydressing_core.train.tiny import tiny_overrides, write_dataset, write_model

from test_train_dist import REPO, _env, _free_port, _result, _train_cmd

STEPS = ["run.max_steps=4", "run.checkpoint_every=1", "run.keep_checkpoints=10", "run.batch_size=1"]


def _torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), "-m", "anydressing_core.train", *args]


def _run(cmd):
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def _weights(path):
    return load_file(str(path))


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyfsdp")
    return {"model": write_model(root / "model"), "manifest": write_dataset(root / "data", count=6), "root": root}


def _args(tiny, out, *extra):
    return [*tiny_overrides(out, tiny["model"], tiny["manifest"]), *STEPS, *extra]


@pytest.fixture(scope="module")
def fsdp_ref(tiny):
    """An uninterrupted 2-process FSDP run of 4 steps, checkpointed every step."""
    out = tiny["root"] / "fsdp"
    p = _run(_torchrun(*_args(tiny, out, "run.strategy=fsdp")))
    return {"out": out, "result": _result(p.stdout), "stderr": p.stderr}


@pytest.fixture(scope="module")
def ddp_ref(tiny):
    out = tiny["root"] / "ddp"
    p = _run(_torchrun(*_args(tiny, out)))
    return {"out": out, "result": _result(p.stdout)}


@pytest.mark.slow
def test_fsdp_two_processes_finish_agree_and_export_loads(tiny, fsdp_ref):
    from anydressing_core import checkpoint
    from anydressing_core.train.__main__ import main

    res, out = fsdp_ref["result"], fsdp_ref["out"]
    assert res["processes"] == 2 and res["step"] == 4
    assert res["weights_agree"], fsdp_ref["stderr"][-2000:]  # each process gathered the same full weights
    ck = out / "checkpoints" / "step_00000004"
    assert (ck / "sharded" / ".metadata").is_file() and not (ck / "model.safetensors").exists()
    assert (ck / "rng_rank0.pt").is_file() and (ck / "rng_rank1.pt").is_file()
    st = json.loads((ck / "state.json").read_text())
    assert st["strategy"] == "fsdp" and st["world_size"] == 2 and st["sharded_files"]
    adapter = checkpoint.load_checkpoint(str(out / "anydressing.safetensors"))
    assert adapter.meta.slots == ["upper", "lower"] and adapter.garments_net is not None
    # the export command reads the shards in one process, without a process group: same file content
    again = tiny["root"] / "exported.safetensors"
    assert main(["export", *tiny_overrides(out, tiny["model"], tiny["manifest"]), "--checkpoint", str(ck),
                 "--out", str(again)]) == 0
    _assert_equal(_weights(again), _weights(out / "anydressing.safetensors"))


@pytest.mark.slow
def test_fsdp_trains_the_same_weights_as_ddp(fsdp_ref, ddp_ref):
    """Same data and noise per process: only the reduction order differs (reduce-scatter of shards
    and a sharded gradient norm instead of DDP's all-reduce), so the weights agree to float rounding."""
    a = _weights(fsdp_ref["out"] / "anydressing.safetensors")
    b = _weights(ddp_ref["out"] / "anydressing.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, worst


@pytest.mark.slow
def test_fsdp_sigkill_then_resume_is_bit_identical(tiny, fsdp_ref):
    killed = tiny["root"] / "killed"
    args = _args(tiny, killed, "run.strategy=fsdp")
    # a session of its own: SIGKILL reaches torchrun's agent and both workers at once, like a lost node
    proc = subprocess.Popen(_torchrun(*args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = killed / "checkpoints" / "step_00000002"
    deadline = time.time() + 500
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith("."))
    assert done and done[-1] < "step_00000004", done  # it really stopped part-way

    p = _run(_torchrun("--resume", "latest", *args))
    assert "resumed from" in p.stderr
    res = _result(p.stdout)
    assert res["step"] == 4 and res["weight_digest"] == fsdp_ref["result"]["weight_digest"]
    _assert_equal(_weights(killed / "anydressing.safetensors"), _weights(fsdp_ref["out"] / "anydressing.safetensors"))


@pytest.mark.slow
def test_a_ddp_checkpoint_continues_under_fsdp(tiny, ddp_ref):
    out = tiny["root"] / "converted"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ddp_ref["out"] / "checkpoints" / "step_00000002", out / "checkpoints" / "step_00000002")
    p = _run(_torchrun("--resume", "latest", *_args(tiny, out, "run.strategy=fsdp")))
    assert "written with run.strategy=ddp, this run uses fsdp: converting" in p.stderr
    a = _weights(out / "anydressing.safetensors")
    b = _weights(ddp_ref["out"] / "anydressing.safetensors")
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_damaged_or_half_written_sharded_checkpoints_are_not_used(tmp_path, fsdp_ref):
    src = fsdp_ref["out"] / "checkpoints" / "step_00000004"
    ck = tmp_path / "checkpoints" / "step_00000004"
    shutil.copytree(src, ck)
    half = tmp_path / "checkpoints" / ".step_00000005.tmp"  # killed while writing step 5: no state.json yet
    shutil.copytree(src / "sharded", half / "sharded")
    assert ckpt.latest_checkpoint(tmp_path) == ck
    assert ckpt.load(ck, 1)["state"]["step"] == 4
    shard = ck / "sharded" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])  # a half-copied shard
    with pytest.raises(AnyDressingError, match=r"incomplete or damaged sharded checkpoint: __1_0\.distcp \(\d+ bytes"):
        ckpt.load(ck, 0)
    shard.unlink()
    with pytest.raises(AnyDressingError, match=r"__1_0\.distcp \(missing\)"):
        ckpt.load(ck, 0)


@pytest.mark.slow
@pytest.mark.parametrize("name, how", [("sharded/__0_0.distcp", "changed"), ("sharded/__1_0.distcp", "truncated"),
                                       ("sharded/.metadata", "changed"), ("sharded/.metadata", "missing"),
                                       ("rng_rank1.pt", "changed"), ("scheduler.pt", "truncated"),
                                       ("state.json", "changed")])
def test_every_file_of_a_sharded_checkpoint_is_checked_before_resume(tmp_path, fsdp_ref, name, how):
    from anydressing_core.train import integrity
    from test_train_resume import damage

    out = tmp_path / "run"
    shutil.copytree(fsdp_ref["out"] / "checkpoints", out / "checkpoints")
    newest = out / "checkpoints" / "step_00000004"
    assert integrity.resolve(out, str(newest), world_size=2) == newest
    damage(newest / name, how)
    with pytest.raises(AnyDressingError) as err:
        integrity.resolve(out, str(newest), world_size=2)
    msg = str(err.value)
    assert "\n" not in msg and name.split("/")[-1] in msg and "step_00000003" in msg, msg
    assert integrity.resolve(out, "latest", world_size=2) == out / "checkpoints" / "step_00000003"


class _Planted:
    """Unpickling this calls os.makedirs(marker): what a crafted DCP .metadata could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (str(self.marker),))


def test_crafted_sharded_metadata_is_refused_before_it_is_unpickled(tmp_path, fsdp_ref):
    """DCP reads .metadata with plain pickle: resume and export first unpickle it with only metadata classes
    allowed, so a checkpoint from elsewhere cannot run code."""
    import pickle

    from anydressing_core.train import fsdp

    ck = tmp_path / "step_00000004"
    shutil.copytree(fsdp_ref["out"] / "checkpoints" / "step_00000004", ck)
    fsdp.check_metadata(ck / "sharded")  # what the trainer writes passes
    marker = tmp_path / "ran"
    (ck / "sharded" / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(AnyDressingError, match=r"refusing .*\.metadata: it names (os|posix)\.makedirs"):
        fsdp.load_model_state(ck, {})
    with pytest.raises(AnyDressingError, match=r"refusing"):
        fsdp.load_sharded(ck, None, None)
    assert not marker.exists(), "the crafted metadata ran"
    (ck / "sharded" / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(AnyDressingError, match=r"could not be read .*damaged"):
        fsdp.check_metadata(ck / "sharded")


@pytest.mark.slow
def test_two_torchrun_nodes_train_like_two_local_processes(tiny, fsdp_ref):
    """The multi-node path: two torchrun agents (one per "node") meeting at a c10d rendezvous."""
    out = tiny["root"] / "nodes"
    port = _free_port()
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
             "--rdzv_id", "anydressing-test", "-m", "anydressing_core.train",
             *tiny_overrides(out, tiny["model"], tiny["manifest"]), "run.max_steps=4", "run.checkpoint_every=2",
             "run.batch_size=1", "run.strategy=fsdp"] for rank in (0, 1)]
    procs = [subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-3000:] for _, e in outs]
    res = _result("".join(o for o, _ in outs))
    assert res["processes"] == 2 and res["step"] == 4 and res["weights_agree"]
    # same world size, same per-rank data and noise as the one-machine run: the same weights, bit for bit
    assert res["weight_digest"] == fsdp_ref["result"]["weight_digest"]


@pytest.mark.slow
def test_fsdp_with_bf16_gradient_checkpointing_accumulation_and_samples(tiny):
    out = tiny["root"] / "bf16"
    p = _run(_torchrun(*tiny_overrides(out, tiny["model"], tiny["manifest"]), "run.strategy=fsdp", "run.max_steps=2",
                       "run.batch_size=1", "run.mixed_precision=bf16", "model.gradient_checkpointing=true",
                       "run.grad_accum=2", "run.checkpoint_every=0", "run.sample_every=1"))
    res = _result(p.stdout)
    assert res["step"] == 2 and res["weights_agree"] and res["total"] == res["total"]  # finite, not NaN
    assert (out / "samples" / "step_00000002.png").is_file() and (out / "anydressing.safetensors").is_file()


def test_strategy_is_checked_when_the_config_loads():
    assert load_config(None, ["run.strategy=fsdp"]).run.strategy == "fsdp"
    assert load_config(None, []).run.strategy == "ddp"
    with pytest.raises(AnyDressingError, match="run.strategy='zero3'; use ddp or fsdp"):
        load_config(None, ["run.strategy=zero3"])
    with pytest.raises(AnyDressingError, match="use run.mixed_precision=bf16"):
        load_config(None, ["run.strategy=fsdp", "run.mixed_precision=fp16"])
