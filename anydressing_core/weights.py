"""Load any weight file the pack reads: AnyDressing checkpoints, and peer layouts imported on the fly.

A file with AnyDressing metadata is read by :func:`.checkpoint.load_checkpoint`; a safetensors file without it
whose keys match a released peer layout (MagicClothing joint, by keys, never by file name) goes through
:mod:`.importers`; anything else is refused with the reason.  Pickles are never loaded here: they go through
``python -m anydressing_core.convert``.
"""

from __future__ import annotations

import logging
import os

from .checkpoint import AnyDressingAdapter, CheckpointMeta, FORMAT_KEY, load_checkpoint, read_safetensors
from .importers import detect_layout, import_state_dicts

log = logging.getLogger(__name__)


def load_weights(path: str, load_garments_net: bool = True) -> AnyDressingAdapter:
    """An :class:`AnyDressingAdapter` from ``path`` (AnyDressing format or an importable peer layout)."""
    shapes, md = read_safetensors(path, load=False)
    if FORMAT_KEY in md:
        return load_checkpoint(path, load_garments_net)
    layout = detect_layout(shapes)
    if layout is None:
        CheckpointMeta.from_strings(md, path)  # raises the "not an AnyDressing checkpoint" error
    tensors, _ = read_safetensors(path)
    log.info("AnyDressing: %s has no AnyDressing metadata; importing it as %s", os.path.basename(path), layout)
    return import_state_dicts([tensors], source=os.path.basename(path))
