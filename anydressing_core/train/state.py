"""Atomic, exactly-resumable training checkpoints.

Layout of ``<output_dir>/checkpoints/step_00001000/`` (written as a hidden ``.tmp`` folder, then
renamed, so a killed run never leaves a half checkpoint under a final name; every file inside is
itself written to a temp name and renamed)::

    model.safetensors     trainable module state (GarmentsNet, GFE LoRA, Wk'/Wv')
    optimizer.pt          optimizer state dict (tensors, read back with weights_only=True)
    scheduler.pt          lr scheduler state dict
    rng_rank{r}.pt        each process's noise/timestep/dropout generator and torch RNG
    state.json            step, epoch, batches done in the epoch, world size, strategy, config

With ``run.strategy=fsdp`` the module and AdamW state are sharded: instead of ``model.safetensors``
and ``optimizer.pt`` the folder holds ``sharded/`` (``torch.distributed.checkpoint``: ``.metadata`` and
one ``__{rank}_0.distcp`` per process, written by every process at once), and state.json lists the
size of each of those files so that a damaged or half-copied checkpoint is refused (:mod:`.fsdp`).
A checkpoint is only complete once ``state.json`` exists, and state.json is written last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import AnyDressingError

log = logging.getLogger(__name__)
_STEP = re.compile(r"^step_(\d+)$")


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda p: torch.save(obj, str(p)))


def checkpoint_dir(output_dir, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(output_dir) -> Optional[Path]:
    """The newest complete checkpoint (hidden temp folders are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / "state.json").is_file()]
    return max(found)[1] if found else None


def begin(output_dir, step: int, is_main: bool) -> Path:
    """The temp folder of a checkpoint in progress (main process creates it; then barrier)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    return tmp


def write_rank(tmp: Path, rank: int, rng: Dict[str, Any]) -> None:
    save_torch(tmp / f"rng_rank{rank}.pt", rng)


def write_main(tmp: Path, model_state: Dict[str, torch.Tensor], optimizer_state, scheduler_state,
               state: Dict[str, Any]) -> None:
    save_tensors(tmp / "model.safetensors", model_state)
    save_torch(tmp / "optimizer.pt", optimizer_state)
    save_torch(tmp / "scheduler.pt", scheduler_state)
    atomic_write(tmp / "state.json", lambda p: p.write_text(json.dumps(state, indent=1), encoding="utf-8"))


def write_sharded_main(tmp: Path, scheduler_state, state: Dict[str, Any]) -> None:
    """The main process's part of an FSDP checkpoint, after every process wrote its shard."""
    save_torch(tmp / "scheduler.pt", scheduler_state)
    atomic_write(tmp / "state.json", lambda p: p.write_text(json.dumps(state, indent=1), encoding="utf-8"))


def commit(tmp: Path, keep: int) -> Path:
    """Rename the finished temp folder to its final name; keep only the newest ``keep`` checkpoints."""
    final = tmp.with_name(tmp.name[1:-len(".tmp")])
    old = None
    if final.exists():  # same step written again (resumed from an older checkpoint): never delete before replacing
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    root = final.parent
    done = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)))
    for _, old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_compatible(path: Path, state: Dict[str, Any], world_size: int) -> None:
    """A checkpoint continues exactly only with the process count that wrote it (RNG and data shards)."""
    if state.get("world_size") != world_size:
        raise AnyDressingError(f"{path} was written by {state.get('world_size')} processes, this run has "
                               f"{world_size}; use the same count for an exact resume")


def strategy_of(state: Dict[str, Any]) -> str:
    return state.get("strategy", "ddp")  # checkpoints from before FSDP were all DDP


def load(path: Path, rank: int) -> Dict[str, Any]:
    """Everything a process needs to continue from ``path``.

    For an FSDP checkpoint ``model`` and ``optimizer`` are absent (read with :func:`.fsdp.load_sharded`
    once the module exists); the sharded files are checked against the sizes state.json recorded.
    """
    path = Path(path)
    if not (path / "state.json").is_file():
        raise AnyDressingError(f"{path} is not a complete checkpoint (no state.json); give a step_XXXXXXXX folder")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise AnyDressingError(
            f"{path} has no RNG state for process {rank}: it was written by {state.get('world_size')} processes. "
            "Resume with the same number of processes for an exact continuation")
    out = {
        "state": state,
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(rng_file, map_location="cpu", weights_only=True),
    }
    if strategy_of(state) == "fsdp":
        from .fsdp import verify

        verify(path, state.get("sharded_files", {}))
        return out
    out["model"] = load_file(str(path / "model.safetensors"))
    out["optimizer"] = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    return out
