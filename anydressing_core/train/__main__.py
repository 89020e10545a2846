"""Command line: ``python -m anydressing_core.train`` (one process) or, for 1..N processes / nodes,
``accelerate launch -m anydressing_core.train ...`` / ``torchrun --nproc_per_node N -m anydressing_core.train ...``.

    train  [--config FILE] [--resume latest|auto|DIR] [section.key=value ...]
    export --config FILE --checkpoint DIR --out FILE.safetensors [section.key=value ...]
    check-data [--config FILE] [section.key=value ...]   read every sample once, list the bad ones

See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from ..errors import AnyDressingError

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m anydressing_core.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON config (configs/*.yaml)")
    p.add_argument("--resume", help="'latest' (error if none), 'auto' (latest if any) or a checkpoint folder")
    p.add_argument("--checkpoint", help="export: the checkpoint folder (step_XXXXXXXX) to export")
    p.add_argument("--out", help="export: output .safetensors path")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. run.max_steps=10 loss.cfg_drop=0.1")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("train", "export", "check-data") else "train"
    args = _parser().parse_args(argv)
    args.command = command
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "export":
            return _export(cfg, args)
        if args.command == "check-data":
            return _check_data(cfg)
        resume = None
        if args.resume:
            try:
                resume = _resolve_resume(cfg, args.resume)
            except AnyDressingError as e:
                if _rank() == 0:  # every process reaches the same verdict; one of them says it
                    print(f"error: {e}", file=sys.stderr)
                return 2
            if resume is None:
                log.info("--resume auto: no checkpoint in %s yet; starting fresh", cfg.run.output_dir)
        from .engine import Trainer

        result = Trainer(cfg, resume=str(resume) if resume else None, resume_verified=True).run()
    except AnyDressingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result))
    return 0


def _rank() -> int:
    """This process's global rank from the launcher's environment (torchrun, accelerate), 0 without one."""
    return int(os.environ.get("RANK", "0"))


def _resolve_resume(cfg, where: str):
    """The checkpoint to resume from, verified on every process BEFORE the process group exists: a damaged
    one stops all processes at once, with one line from process 0, and no collective waits for a process
    that already left."""
    from . import integrity

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return integrity.resolve(cfg.run.output_dir, where, world, cfg.run.checksums, warn=_rank() == 0)


def _export(cfg, args) -> int:
    import torch

    from . import state as ckpt
    from .components import load_base_unet
    from .export import export_model
    from .model import DressingTrainModel

    from . import integrity

    if not args.checkpoint or not args.out:
        raise AnyDressingError("export needs --checkpoint DIR and --out FILE.safetensors")
    integrity.verify(args.checkpoint, cfg.run.checksums)
    data = ckpt.load(args.checkpoint, 0)
    m = cfg.model
    torch.manual_seed(cfg.run.seed)
    unet, base_info = load_base_unet(m.base)
    model = DressingTrainModel.from_config(unet, m)
    if ckpt.strategy_of(data["state"]) == "fsdp":  # sharded: read every shard into the full module, here
        from .fsdp import load_model_state

        model.load_state_dict(load_model_state(args.checkpoint, model.state_dict()))
    else:
        model.load_state_dict(data["model"], strict=False)
    path = export_model(model, args.out, cfg, data["state"]["step"], base_info)
    print(json.dumps({"exported": str(path), "step": data["state"]["step"]}))
    return 0


def _check_data(cfg) -> int:
    """Read (and augment) every sample once; print a JSON summary; exit 1 when any is bad."""
    from ..data import DressingDataset
    from .engine import build_records

    ds = DressingDataset(build_records(cfg), cfg.data, seed=cfg.run.seed)
    bad = {}
    for i in range(len(ds)):
        try:
            ds.load(i)
        except (AnyDressingError, OSError, ValueError) as e:
            bad[str(ds.records[i].source or ds.records[i].person)] = str(e)
    print(json.dumps({"samples": len(ds), "bad": len(bad), "bad_samples": bad}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
