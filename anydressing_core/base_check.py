"""Was this MODEL loaded from the checkpoint the AnyDressing weights were trained on?

ComfyUI's MODEL (a ``ModelPatcher`` from Load Checkpoint) does not record which file it came from, so the
export records a cheap fingerprint of the base's weights and the nodes compare it with the weights they get.

Fingerprint [choice]: 8 evenly spaced values of the weight and the bias of ``norm2`` (the LayerNorm before
cross-attention) of every transformer block, keyed by block (``input.1.0``).  These tensors

* stay frozen in training, also in GarmentsNet (its cross-attention is removed), so a trained GarmentsNet
  still matches its base;
* are not what LoRAs patch (they target the attention and feed-forward projections), so a base with a LoRA
  applied still matches;
* differ between checkpoints that are fine-tuned or merged (every full fine-tune moves them).

The values are stored exactly (float32) and compared after casting them to the MODEL's weight dtype, so an
fp16, bf16 or fp32 copy of the same file matches bit for bit.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from .features import BlockKey, key_from_str, key_to_str

KIND = "norm2-8"
SAMPLES = 8
_LDM_NORM2 = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.1\.transformer_blocks\.(\d+)\.norm2\.(weight|bias)$"
                        r"|^middle_block\.1\.transformer_blocks\.(\d+)\.norm2\.(weight|bias)$")

Norms = Dict[BlockKey, Dict[str, torch.Tensor]]


def ldm_norms(state: Mapping[str, torch.Tensor], prefix: str = "") -> Norms:
    """``{block key: {"weight", "bias"}}`` of norm2 from LDM-named UNet tensors (ComfyUI's
    ``diffusion_model.state_dict()``, or a checkpoint's keys with ``prefix="model.diffusion_model."``)."""
    out: Norms = {}
    for name, value in state.items():
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        m = _LDM_NORM2.match(name)
        if not m:
            continue
        if m.group(1):
            key = ("input" if m.group(1) == "input_blocks" else "output", int(m.group(2)), int(m.group(3)))
            leaf = m.group(4)
        else:
            key, leaf = ("middle", 0, int(m.group(5))), m.group(6)
        out.setdefault(key, {})[leaf] = value
    return out


def diffusers_norms(unet) -> Norms:
    """The same from a diffusers ``UNet2DConditionModel``."""
    from .keys import diffusers_layer_keys

    mods = dict(unet.named_modules())
    return {key: {"weight": mods[f"{name}.norm2"].weight, "bias": mods[f"{name}.norm2"].bias}
            for name, key in diffusers_layer_keys(unet.config).items() if mods[name].norm2 is not None}


def _positions(size: int) -> torch.Tensor:
    return torch.linspace(0, size - 1, SAMPLES).round().long()


def fingerprint(norms: Norms) -> Dict:
    """``{"kind": KIND, "layers": {"input.1.0": [8 weight values, 8 bias values], ...}}`` (JSON-ready)."""
    layers = {}
    for key in sorted(norms):
        parts = norms[key]
        values = []
        for leaf in ("weight", "bias"):
            t = parts[leaf].detach().flatten().float().cpu()
            values += t[_positions(t.numel())].tolist()
        layers[key_to_str(key)] = values
    return {"kind": KIND, "layers": layers}


def compare(recorded: Mapping, norms: Norms) -> Tuple[int, int]:
    """``(values that differ, values compared)`` between a recorded fingerprint and a model's norms."""
    differ = total = 0
    for name, values in recorded.get("layers", {}).items():
        parts = norms.get(key_from_str(name))
        half = len(values) // 2
        if parts is None or "weight" not in parts or "bias" not in parts:
            differ, total = differ + len(values), total + len(values)
            continue
        for leaf, expected in (("weight", values[:half]), ("bias", values[half:])):
            t = parts[leaf].detach().flatten()
            actual = t[_positions(t.numel()).to(t.device)].float().cpu()
            want = torch.tensor(expected, dtype=torch.float32).to(t.dtype).float()
            differ += int((actual != want).sum())
            total += len(expected)
    return differ, total


def describe_base(meta) -> str:
    source = getattr(meta, "base_checkpoint", None) or {}
    name = source.get("file") or source.get("folder") or "its base"
    digest = source.get("sha256")
    return f"{name} (sha256 {digest[:12]})" if digest else name


def base_warning(meta, ldm_state: Mapping[str, torch.Tensor], what: str = "the MODEL") -> Optional[str]:
    """A one-line warning when ``ldm_state`` (LDM-named UNet tensors) is not the base ``meta`` records,
    None when it is, or when the weights carry no fingerprint (older files, imported peers)."""
    recorded = getattr(meta, "base_fingerprint", None)
    if not recorded or recorded.get("kind") != KIND:
        return None
    differ, total = compare(recorded, ldm_norms(ldm_state))
    if differ == 0:
        return None
    return (f"{what} does not look like the checkpoint these AnyDressing weights were trained on, "
            f"{describe_base(meta)}: {differ} of {total} sampled LayerNorm values differ. Dressing still runs "
            "(DressingNet stays frozen, so fine-tunes of that base often work), but for the trained quality "
            "load that checkpoint")
