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
one ``__{rank}_0.distcp`` per process, written by every process at once).

A checkpoint is only complete once ``state.json`` exists, and state.json is written last: it records the
size and SHA-256 of every other file and a checksum of itself, so a damaged or half-copied checkpoint is
refused before it is read (:mod:`.integrity`).
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
from . import integrity

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


def write_state(tmp: Path, state: Dict[str, Any], checksums: bool = True) -> None:
    """state.json, last: the size (and SHA-256) of every file already in ``tmp``, sealed with its own checksum."""
    sealed = integrity.seal({**state, "files": integrity.record_files(tmp, checksums)})
    atomic_write(tmp / integrity.STATE, lambda p: p.write_text(json.dumps(sealed, indent=1), encoding="utf-8"))


def write_main(tmp: Path, model_state: Dict[str, torch.Tensor], optimizer_state, scheduler_state,
               state: Dict[str, Any], checksums: bool = True) -> None:
    """Process 0's part of a DDP checkpoint, after every process wrote its RNG file."""
    save_tensors(tmp / "model.safetensors", model_state)
    save_torch(tmp / "optimizer.pt", optimizer_state)
    save_torch(tmp / "scheduler.pt", scheduler_state)
    write_state(tmp, state, checksums)


def write_sharded_main(tmp: Path, scheduler_state, state: Dict[str, Any], checksums: bool = True) -> None:
    """The main process's part of an FSDP checkpoint, after every process wrote its shard."""
    save_torch(tmp / "scheduler.pt", scheduler_state)
    write_state(tmp, state, checksums)


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


def _read(path: Path, read):
    """``read(path)``, with any failure turned into one line that names the file."""
    try:
        return read(path)
    except Exception as e:  # noqa: BLE001 - safetensors / torch.load / zip errors for a damaged file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise AnyDressingError(f"{path} could not be read ({type(e).__name__}: {first}); the checkpoint is damaged: "
                               "resume from an older step_XXXXXXXX folder, or with --resume latest") from None


def _torch(path: Path):
    return _read(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))


def load(path: Path, rank: int) -> Dict[str, Any]:
    """Everything a process needs to continue from ``path`` (:func:`.integrity.verify` checks the files first).

    For an FSDP checkpoint ``model`` and ``optimizer`` are absent (read with :func:`.fsdp.load_sharded`
    once the module exists); the sharded files are checked against the sizes state.json recorded.
    """
    path = Path(path)
    if not (path / integrity.STATE).is_file():
        raise AnyDressingError(f"{path} is not a complete checkpoint (no state.json); give a step_XXXXXXXX folder")
    state = integrity.read_state(path)
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise AnyDressingError(
            f"{path} has no RNG state for process {rank}: it was written by {state.get('world_size')} processes. "
            "Resume with the same number of processes for an exact continuation")
    out = {"state": state, "scheduler": _torch(path / "scheduler.pt"), "rng": _torch(rng_file)}
    if strategy_of(state) == "fsdp":
        from .fsdp import verify

        verify(path, state.get("sharded_files", {}))
        return out
    out["model"] = _read(path / "model.safetensors", lambda p: load_file(str(p)))
    out["optimizer"] = _torch(path / "optimizer.pt")
    return out
