"""Trainer configuration: a YAML (or JSON) file, then ``section.key=value`` overrides from the CLI."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..data.augment import AugmentConfig
from ..data.dataset import DataConfig
from ..errors import AnyDressingError


@dataclass
class ModelConfig:
    base: str = ""                      # the .safetensors checkpoint you sample with (SD1.5/SDXL), or a diffusers
                                        # SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/)
    tokenizer: str = ""                 # folder with CLIP's vocab.json + merges.txt; default: the folder's
                                        # tokenizer/, or the host ComfyUI's comfy/sd1_tokenizer for a single file
    slots: List[str] = field(default_factory=lambda: ["upper", "lower", "hat"])  # [paper] 0 upper, 1 lower, 2 hat
    lora_rank: int = 64                 # [choice] METHOD.md
    lora_alpha: float = 8.0
    garments_net_trainable: str = "full"  # "full" [paper: fully trainable] or "lora" (only the GFE LoRA)
    form: str = "separate"              # [paper, Eq. 6]
    train_strength: float = 1.0         # lambda during training [choice]
    gradient_checkpointing: bool = False


@dataclass
class DatasetSpec:
    kind: str = "manifest"              # manifest | dresscode | vitonhd
    path: str = ""                      # manifest .jsonl or dataset root
    split: str = "train"
    categories: List[str] = field(default_factory=lambda: ["upper_body", "lower_body", "dresses"])
    captions: Optional[str] = None      # JSON {image_name: caption} for dresscode / vitonhd


@dataclass
class LossConfig:
    loc_weight: float = 0.01            # [paper] lambda1
    loc_max_tokens: int = 0             # IGL only on DA layers with at most this many tokens; 0 = all [paper].
                                        # The maps need explicit fp32 probabilities [B, heads, T, N*T] per layer,
                                        # ~12 GB per 96x72 layer at batch 4 (docs/TRAINING.md) [choice to offer]
    texture_weight: float = 0.001       # [paper] lambda2; 0 disables GTL (and the VGG16 requirement)
    gtl_max_t: int = 350                # [paper]
    vgg16_path: str = ""                # local torchvision vgg16 weights for DISTS
    dists_alpha_beta: str = ""          # optional DISTS alpha/beta tensors file
    cfg_drop: float = 0.1               # [choice] text and garments dropped together
    dists_random_weights: bool = False  # tests only: random VGG16


@dataclass
class OptimConfig:
    lr: float = 5e-5                    # [paper] fixed
    weight_decay: float = 1e-2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclass
class RunConfig:
    output_dir: str = "runs/anydressing"
    seed: int = 0
    max_steps: int = 100000             # [paper]
    batch_size: int = 4                 # per process [paper: 4]
    grad_accum: int = 1
    mixed_precision: str = "no"         # no | fp16 | bf16
    strategy: str = "ddp"               # ddp (replicated weights) | fsdp (sharded weights, gradients, AdamW state)
    num_workers: int = 2
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    checksums: bool = True              # record and check every checkpoint file's SHA-256 (false: sizes only)
    log_every: int = 10
    sample_every: int = 1000
    sample_steps: int = 30              # DDIM steps for sample grids
    export_name: str = "anydressing.safetensors"
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, values: Dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise AnyDressingError(f"config section {where or 'top level'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise AnyDressingError(f"unknown config key(s) {unknown} in {where or 'top level'}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}".strip("."))
        else:
            kwargs[name] = _coerce(value, default, f"{where}.{name}".strip("."))
    return cls(**kwargs)


def _coerce(value, default, where: str):
    """YAML reads ``1e-3`` as a string and ``1`` as an int: bring numbers to the field's type."""
    if isinstance(default, bool) or value is None:
        return value
    try:
        if isinstance(default, float) and isinstance(value, (int, str)):
            return float(value)
        if isinstance(default, int) and isinstance(value, str):
            return int(value)
    except ValueError:
        raise AnyDressingError(f"config {where}={value!r} is not a number") from None
    return value


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """``["run.max_steps=10", "loss.cfg_drop=0"]`` onto a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise AnyDressingError(f"override {item!r} must look like section.key=value (e.g. run.max_steps=10)")
        dotted, text = item.split("=", 1)
        node = raw
        parts = dotted.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise AnyDressingError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_value(text)
    return raw


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults < file (YAML/JSON) < overrides.  Unknown keys are errors (typos must not pass)."""
    raw: Dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise AnyDressingError(f"config file {p} does not exist")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    raw = apply_overrides(raw, overrides)
    cfg = _build(TrainConfig, raw, "")
    if cfg.run.mixed_precision not in ("no", "fp16", "bf16"):
        raise AnyDressingError(f"run.mixed_precision={cfg.run.mixed_precision!r}; use no, fp16 or bf16")
    if cfg.run.strategy not in ("ddp", "fsdp"):
        raise AnyDressingError(f"run.strategy={cfg.run.strategy!r}; use ddp or fsdp")
    if cfg.run.strategy == "fsdp" and cfg.run.mixed_precision == "fp16":
        raise AnyDressingError("run.mixed_precision=fp16 with run.strategy=fsdp is not supported: the fp16 loss "
                               "scaler is not wired for sharded gradients here; use run.mixed_precision=bf16 "
                               "(no loss scaling needed) or run.strategy=ddp")
    if cfg.model.garments_net_trainable not in ("full", "lora"):
        raise AnyDressingError("model.garments_net_trainable must be 'full' or 'lora'")
    if cfg.dataset.kind not in ("manifest", "dresscode", "vitonhd"):
        raise AnyDressingError(f"dataset.kind={cfg.dataset.kind!r}; use manifest, dresscode or vitonhd")
    return cfg


__all__ = ["TrainConfig", "ModelConfig", "DatasetSpec", "LossConfig", "OptimConfig", "RunConfig", "DataConfig",
           "AugmentConfig", "load_config", "apply_overrides"]
