"""Damaged checkpoints: every file kind truncated, changed in place or missing is refused with one line that names
the file and the fix; ``--resume latest`` skips a damaged newest checkpoint; under torchrun the refusal comes from
process 0 only and before any process-group work."""

import json
import logging
import shutil
import subprocess
import sys
import time

import pytest

from anydressing_core.errors import AnyDressingError
from anydressing_core.train import integrity
from anydressing_core.train.config import load_config
from anydressing_core.train.tiny import tiny_overrides, write_dataset, write_model

from test_train_dist import REPO, _env, _free_port

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = ["run.max_steps=3", "run.checkpoint_every=1", "run.keep_checkpoints=10", "run.batch_size=1"]
KINDS = ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt", "state.json"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """An uninterrupted 3-step run checkpointed after every step."""
    from anydressing_core.train.engine import Trainer

    root = tmp_path_factory.mktemp("resume")
    tiny = {"model": write_model(root / "model"), "manifest": write_dataset(root / "data", count=4), "root": root}
    out = root / "ref"
    result = Trainer(load_config(None, tiny_overrides(out, tiny["model"], tiny["manifest"]) + STEPS)).run()
    return {**tiny, "out": out, "result": result}


def _copy(ref, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ref["out"] / "checkpoints", out / "checkpoints")
    return out, out / "checkpoints" / "step_00000003"


def damage(path, how):
    """Truncate, change one byte in place (same size), or remove a file."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "changed":
        if path.name == "state.json":  # still valid JSON: one recorded number changed
            at = data.index(b'"batches_done": ') + len(b'"batches_done": ')
            path.write_bytes(data[:at] + bytes([ord("0") + (data[at] - ord("0") + 1) % 10]) + data[at + 1:])
            json.loads(path.read_text())
        else:
            at = len(data) - 9
            path.write_bytes(data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "changed", "missing"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_file_is_named_with_the_fix_in_one_line(ref, tmp_path, kind, how):
    out, newest = _copy(ref, tmp_path)
    integrity.verify(newest)  # intact before
    damage(newest / kind, how)
    with pytest.raises(AnyDressingError) as err:
        integrity.resolve(out, str(newest))
    msg = str(err.value)
    assert "\n" not in msg and kind in msg, msg
    assert str(out / "checkpoints" / "step_00000002") in msg and "--resume latest" in msg, msg


@pytest.mark.parametrize("kind", KINDS)
def test_resume_latest_skips_a_damaged_newest_checkpoint(ref, tmp_path, kind, caplog):
    out, newest = _copy(ref, tmp_path)
    damage(newest / kind, "truncated")
    with caplog.at_level(logging.WARNING):
        chosen = integrity.resolve(out, "latest")
    assert chosen == out / "checkpoints" / "step_00000002"
    assert any(kind in r.getMessage() and "skipping a damaged checkpoint" in r.getMessage() for r in caplog.records)


def test_resume_latest_after_a_damaged_newest_continues_exactly(ref, tmp_path):
    """Skipping to step 2 and training on gives the uninterrupted run's weights bit for bit."""
    from anydressing_core.train.engine import Trainer

    out, newest = _copy(ref, tmp_path)
    damage(newest / "optimizer.pt", "changed")
    cfg = load_config(None, tiny_overrides(out, ref["model"], ref["manifest"]) + STEPS)
    tr = Trainer(cfg, resume="latest")
    assert tr.step == 2
    assert tr.run()["weight_digest"] == ref["result"]["weight_digest"]
    integrity.verify(out / "checkpoints" / "step_00000003")  # the damaged step was written again, intact


def test_every_checkpoint_damaged_or_none_is_an_error_not_a_fresh_start(ref, tmp_path):
    out, _ = _copy(ref, tmp_path)
    for step in (1, 2, 3):
        damage(out / "checkpoints" / f"step_0000000{step}" / "model.safetensors", "truncated")
    for where in ("latest", "auto"):
        with pytest.raises(AnyDressingError, match="every checkpoint under .* is damaged"):
            integrity.resolve(out, where)
    assert integrity.resolve(tmp_path / "empty", "auto") is None
    with pytest.raises(AnyDressingError, match="no complete checkpoint"):
        integrity.resolve(tmp_path / "empty", "latest")


def test_another_process_count_is_refused_before_the_group_forms(ref, tmp_path):
    out, newest = _copy(ref, tmp_path)
    with pytest.raises(AnyDressingError, match="written by 1 processes, this run has 2"):
        integrity.resolve(out, str(newest), world_size=2)


def test_sizes_only_when_checksums_are_off(ref, tmp_path):
    out, newest = _copy(ref, tmp_path)
    damage(newest / "model.safetensors", "changed")
    assert integrity.resolve(out, str(newest), checksums=False) == newest  # same size: not seen without SHA-256
    with pytest.raises(AnyDressingError, match="recorded SHA-256"):
        integrity.resolve(out, str(newest))


def _cli(ref, out, *extra, nproc=1):
    args = [*tiny_overrides(out, ref["model"], ref["manifest"]), *STEPS, *extra]
    if nproc == 1:
        cmd = [sys.executable, "-m", "anydressing_core.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "anydressing_core.train", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    return proc, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_cli_refuses_a_damaged_checkpoint_on_one_line_from_process_0_before_the_group(ref, tmp_path, nproc):
    out, newest = _copy(ref, tmp_path)
    if nproc == 2:  # a 2-process checkpoint: the same files plus rank 1's RNG state
        state = json.loads((newest / "state.json").read_text())
        shutil.copy(newest / "rng_rank0.pt", newest / "rng_rank1.pt")
        state["world_size"] = 2
        state["files"] = integrity.record_files(newest)
        (newest / "state.json").write_text(json.dumps(integrity.seal({k: v for k, v in state.items()
                                                                      if k != "state_sha256"})))
    damage(newest / "optimizer.pt", "truncated")
    proc, seconds = _cli(ref, out, "--resume", str(newest), nproc=nproc)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "optimizer.pt is" in errors[0] and "--resume latest" in errors[0]
    assert "trainable parameters" not in proc.stderr, "the model was built: the check came too late"
    assert "Traceback (most recent call last)" not in proc.stderr.split("error:")[0]
