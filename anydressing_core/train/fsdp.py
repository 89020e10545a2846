"""FSDP (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``) for the trainable module, and its
sharded checkpoint state (``torch.distributed.checkpoint``, DCP).

Why FSDP2 applied here and not through accelerate: accelerate only turns FSDP on for GPU-type
distributed runs, while ``fully_shard`` runs the same on CPU (gloo) and GPU (NCCL), so one code
path is tested here and used on GPUs.  Accelerate still forms the process group, runs the
optimizer/accumulation bookkeeping, autocast and logging.

Units: every down/mid/up block of GarmentsNet is its own FSDP unit (all-gathered for its forward
and backward, then freed); the root unit holds the rest of the trainable module (GarmentsNet's
stem/time embedding/head, the GFE LoRA and the DA projections Wk'/Wv').  The root's parameters
stay gathered for the whole step: the LoRA and DA weights are read by attention processors
*inside* other modules (GarmentsNet blocks, the frozen DressingNet), which FSDP's module hooks
could not see.  The frozen DressingNet, VAE and text encoder are not in the module tree and stay
replicated, as with DDP.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict

import torch
import torch.distributed as dist

from ..errors import AnyDressingError

log = logging.getLogger(__name__)
SHARDED_DIR = "sharded"  # DCP folder inside a checkpoint: .metadata + one __{rank}_0.distcp per process


def ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group even for one process (``python -m anydressing_core.train``)."""
    if dist.is_available() and dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def shard(model, device: torch.device):
    """Apply ``fully_shard`` to GarmentsNet's blocks, then to ``model`` (the root unit), in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    ensure_process_group(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model.to(device)
    unet = model.garments.unet
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if block is not None and any(p.requires_grad for p in block.parameters()):
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.sharded = True
    return model


def reshard(model) -> None:
    """Free the gathered weights after forwards without backward (sample grids).

    The root unit stays gathered after its forward, to be freed after backward; with no backward
    it stays so, and the next state-dict gather then fails (torch 2.14: "Trying to resize storage
    that is not resizable").
    """
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_state_dict(model) -> Dict[str, torch.Tensor]:
    """The whole module state gathered parameter by parameter onto process 0's CPU (empty elsewhere).

    Collective: every process must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(folder: Path, model, optimizer) -> None:
    """Each process writes its own shard of the module and AdamW state (no process gathers them)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(Path(folder) / SHARDED_DIR))


#: What DCP's ``.metadata`` pickle may name: its own metadata dataclasses, tensor shapes, dtypes and
#: layouts, paths.  Nothing here runs code when unpickled.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": None,  # every name of that module (dataclasses, an enum)
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


def check_metadata(root: Path) -> None:
    """Refuse a DCP ``.metadata`` that names anything but checkpoint metadata, BEFORE DCP unpickles it.

    DCP reads that index with plain ``pickle``, which runs whatever a crafted file names.  Here it
    is first unpickled with only :data:`_METADATA_GLOBALS` (plus torch dtypes) allowed, so a
    checkpoint from elsewhere cannot run code on ``--resume`` or ``export``.
    """
    import pickle

    class Forbidden(pickle.UnpicklingError):
        pass

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            allowed = _METADATA_GLOBALS.get(module, set())
            if module in _METADATA_GLOBALS and (allowed is None or name in allowed):
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
                return getattr(torch, name)
            raise Forbidden(f"{module}.{name}")

    path = Path(root) / ".metadata"
    try:
        with open(path, "rb") as f:
            Restricted(f).load()
    except FileNotFoundError:
        raise AnyDressingError(f"{path} is missing: not a complete sharded checkpoint; resume from an older "
                               "step_XXXXXXXX folder") from None
    except Forbidden as e:
        raise AnyDressingError(f"refusing {path}: it names {e}, which checkpoint metadata written by this trainer "
                               "never does (a crafted file could run code). Only resume or export checkpoints "
                               "your own runs wrote") from None
    except Exception as e:  # noqa: BLE001 - truncated or garbage bytes
        raise AnyDressingError(f"{path} could not be read ({type(e).__name__}: {str(e)[:200]}); the checkpoint is "
                               "damaged: resume from an older step_XXXXXXXX folder") from None


def load_sharded(folder: Path, model, optimizer) -> None:
    """Read a DCP checkpoint into ``model``/``optimizer``, whether they are sharded or plain (DDP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    check_metadata(Path(folder) / SHARDED_DIR)
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    try:
        dcp.load(state, checkpoint_id=str(Path(folder) / SHARDED_DIR),
                 no_dist=not (dist.is_available() and dist.is_initialized()))
    except Exception as e:  # DCP raises CheckpointException / RuntimeError / OSError for unreadable shards
        raise AnyDressingError(f"the sharded state in {folder}/{SHARDED_DIR} could not be read ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:300]}); the checkpoint is damaged: resume from an "
                               "older step_XXXXXXXX folder") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_model_state(folder: Path, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fill a plain ``model.state_dict()`` from a sharded checkpoint, in one process (export)."""
    import torch.distributed.checkpoint as dcp

    check_metadata(Path(folder) / SHARDED_DIR)
    sd = {k: v.clone() for k, v in state_dict.items()}
    dcp.load({"model": sd}, checkpoint_id=str(Path(folder) / SHARDED_DIR), no_dist=True)
    return sd


def shard_sizes(folder: Path) -> Dict[str, int]:
    """``{file name: bytes}`` of the DCP folder (``.metadata`` and every shard file it names), recorded
    in state.json by process 0 after every process wrote.  Every file must be visible to process 0:
    a multi-node run needs ``run.output_dir`` on a filesystem all nodes share.
    """
    from torch.distributed.checkpoint import FileSystemReader

    root = Path(folder) / SHARDED_DIR
    meta = FileSystemReader(str(root)).read_metadata()  # DCP's own (pickled) index, written by this trainer
    files = {".metadata"} | {info.relative_path for info in meta.storage_data.values()}
    missing = sorted(f for f in files if not (root / f).is_file())
    if missing:
        raise AnyDressingError(f"{root}: {missing} written by other processes are not visible to process 0; "
                               "run.output_dir must be on a filesystem every node shares")
    return {f: (root / f).stat().st_size for f in sorted(files)}


def load_full(model, optimizer, model_state: Dict[str, torch.Tensor], optimizer_state, names) -> None:
    """Load a DDP checkpoint (full module state, AdamW state keyed by parameter index) into a sharded run.

    ``names``: the trainable parameters' names in the order the optimizer was given them.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    osd = {"state": {names[int(i)]: s for i, s in optimizer_state["state"].items()},
           "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                            for g in optimizer_state["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))


def verify(folder: Path, recorded: Dict[str, int]) -> None:
    """Refuse a sharded checkpoint whose files are missing or of another size than when it was written."""
    folder = Path(folder)
    if not recorded:
        raise AnyDressingError(f"{folder}/state.json lists no sharded files; the checkpoint is damaged")
    root = folder / SHARDED_DIR
    found = {p.name: p.stat().st_size for p in root.iterdir() if p.is_file()} if root.is_dir() else {}
    bad = [f"{name} ({'missing' if name not in found else f'{found[name]} bytes, written {size}'})"
           for name, size in recorded.items() if found.get(name) != size]
    if bad:
        raise AnyDressingError(f"{folder} is an incomplete or damaged sharded checkpoint: {', '.join(bad)}. "
                               "Copy it again, or resume from an older step_XXXXXXXX folder")


def export_twin(full: Dict[str, torch.Tensor], like, cfg):
    """A plain (unsharded) copy of the trainable module holding ``full``, for the nodes' exporter.

    Built on the meta device from the UNet config and filled by assignment, so process 0 holds
    the weights once (the gathered state dict), not twice.
    """
    from diffusers import UNet2DConditionModel

    from .model import DressingTrainModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(like.garments.unet.config)
        twin = DressingTrainModel.from_config(unet, cfg.model)
    missing, unexpected = twin.load_state_dict(full, strict=False, assign=True)
    if missing or unexpected:
        raise AnyDressingError(f"gathered state does not fit the module: missing {missing[:4]}, "
                               f"unexpected {unexpected[:4]}")
    return twin
