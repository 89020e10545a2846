"""Export a trained model to the nodes' checkpoint format (:mod:`anydressing_core.checkpoint`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

from .. import checkpoint

log = logging.getLogger(__name__)


def export_model(model, path, cfg=None, step: int = 0, components=None) -> Path:
    """Write ``model`` (:class:`~.model.DressingTrainModel`, unwrapped) as an AnyDressing safetensors file.

    ``components`` (:class:`~.components.Components`, or anything with ``base``, ``source`` and
    ``fingerprint``) says which base checkpoint the weights were trained on; the file records its name,
    SHA-256 and weight fingerprint.  The file is written under a temp name and renamed; load it with
    ``checkpoint.load_checkpoint`` or put it in ``ComfyUI/models/anydressing`` for the AnyDressingLoader node.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dressing = SimpleNamespace(projections=model.da, form=model.form, keys=list(model.da.keys))
    provenance = {"trainer": "anydressing_core.train", "step": int(step)}
    if cfg is not None:
        provenance.update(base=Path(cfg.model.base).name, dataset=f"{cfg.dataset.kind}:{Path(cfg.dataset.path).name}",
                          loss=f"loc {cfg.loss.loc_weight}, texture {cfg.loss.texture_weight}")
    adapter = checkpoint.export(garments_net=model.garments, dressing=dressing, provenance=provenance,
                                form=model.form, base=getattr(components, "base", None),
                                base_checkpoint=getattr(components, "source", None),
                                base_fingerprint=getattr(components, "fingerprint", None))
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    adapter.save(str(tmp))
    os.replace(tmp, path)
    log.info("exported %s (%s)", path, adapter.describe())
    return path
