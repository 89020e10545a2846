"""The trainer as users launch it: 2 processes over gloo, and SIGKILL + --resume.

Each test starts real processes (``torch.distributed.run`` / ``python -m anydressing_core.train``)
on the tiny model, so they take tens of seconds on 2 shared cores.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from anydressing_core.train.tiny import tiny_overrides, write_dataset, write_model
from dist_support import REPO, child_env, free_port, result_line, train_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinydist")
    return {"model": write_model(root / "model"), "manifest": write_dataset(root / "data", count=6), "root": root}


def test_two_gloo_processes_finish_and_agree_on_weights(tiny):
    out = tiny["root"] / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "anydressing_core.train",
           *tiny_overrides(out, tiny["model"], tiny["manifest"]), "run.max_steps=3", "run.checkpoint_every=3",
           "run.batch_size=1"]
    p = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    res = result_line(p.stdout)
    assert res["processes"] == 2 and res["step"] == 3
    assert res["weights_agree"], p.stderr[-2000:]
    ck = out / "checkpoints" / "step_00000003"
    assert (ck / "rng_rank0.pt").is_file() and (ck / "rng_rank1.pt").is_file()
    assert json.loads((ck / "state.json").read_text())["world_size"] == 2
    from anydressing_core import checkpoint

    assert checkpoint.load_checkpoint(str(out / "anydressing.safetensors")).meta.slots == ["upper", "lower"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny):
    steps = ["run.max_steps=5", "run.checkpoint_every=1", "run.keep_checkpoints=10"]
    ref = tiny["root"] / "ref"
    p = subprocess.run(train_cmd(*tiny_overrides(ref, tiny["model"], tiny["manifest"]), *steps),
                       cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]

    killed = tiny["root"] / "killed"
    args = [*tiny_overrides(killed, tiny["model"], tiny["manifest"]), *steps]
    proc = subprocess.Popen(train_cmd(*args), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "step_00000002"
    deadline = time.time() + 500
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith("."))
    assert done and done[-1] < "step_00000005", done  # it really stopped part-way

    p = subprocess.run(train_cmd("--resume", "latest", *args), cwd=REPO, env=child_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "resumed from" in p.stderr
    a = load_file(str(ref / "checkpoints" / "step_00000005" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step_00000005" / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]


def test_bf16_gradient_checkpointing_and_accumulation_run(tiny):
    out = tiny["root"] / "bf16"
    p = subprocess.run(train_cmd(*tiny_overrides(out, tiny["model"], tiny["manifest"]), "run.max_steps=2",
                                  "run.mixed_precision=bf16", "model.gradient_checkpointing=true", "run.grad_accum=2",
                                  "run.checkpoint_every=0"),
                       cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    res = result_line(p.stdout)
    assert res["step"] == 2 and all(map(lambda v: v == v, [res["total"], res["ldm"]]))  # finite, not NaN
    assert (out / "anydressing.safetensors").is_file()
