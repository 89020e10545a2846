"""The AnyDressing checkpoint format (safetensors) and the adapter object the nodes pass around.

Layout (docs/FORMAT.md is the reference)::

    garments_net.<diffusers UNet key>      GarmentsNet UNet (optional: absent = zero-shot, base UNet)
    gfe.<layer>.<target>.lora_A            [S, r, C]   one LoRA set per slot, target in q/k/v/out
    gfe.<layer>.<target>.lora_B            [S, C, r]
    da.<layer>.to_k / da.<layer>.to_v      [C, C]      Wk', Wv' per DressingNet layer (optional)
    resampler.*                            IMAGDressing's image resampler (run by AnyDressing Encode Garments with clip_vision)

``<layer>`` is a ComfyUI block key string, e.g. ``input.1.0``.  Metadata (all strings) under
``anydressing.*``: format_version, base, layers, slots, lora_rank, lora_alpha, lora_targets,
default_lambda, form, garments_net_context, unet_config, provenance, licence, and (optional, trainer
exports) base_checkpoint, base_fingerprint: which checkpoint the weights were trained on.

Only safetensors are read here; pickles go through ``python -m anydressing_core.convert``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .attention import DAForm, sdpa_attention
from .errors import AnyDressingError
from .features import BlockKey, GarmentFeatures, GarmentsNetContext, key_from_str, key_to_str
from .gfe import LORA_TARGETS, DAProjections, GFEHooks, GFELoRA, layer_keys
from .keys import base_shape

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BASES = ("sd15", "sdxl")
CONTEXTS = GarmentsNetContext.ALL
PREFIXES = ("garments_net.", "gfe.", "da.", "resampler.")
_M = "anydressing."
#: The metadata key every AnyDressing checkpoint carries.
FORMAT_KEY = _M + "format_version"


@dataclass
class CheckpointMeta:
    """Metadata of an AnyDressing checkpoint (see module docstring)."""

    base: str = "sd15"
    layers: List[BlockKey] = field(default_factory=list)
    slots: List[str] = field(default_factory=list)
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    default_lambda: float = 0.7
    form: str = DAForm.SEPARATE
    garments_net_context: str = "none"
    unet_config: Optional[Dict[str, Any]] = None
    provenance: Dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    #: the base the weights were trained on: ``{"file": name, "sha256": hex, "bytes": n}`` (or ``{"folder": name}``)
    base_checkpoint: Dict[str, Any] = field(default_factory=dict)
    #: :func:`.base_check.fingerprint` of that base's UNet (compared with the MODEL by Encode Garments)
    base_fingerprint: Optional[Dict[str, Any]] = None
    format_version: int = FORMAT_VERSION

    def to_strings(self) -> Dict[str, str]:
        d = asdict(self)
        d["layers"] = [key_to_str(k) for k in self.layers]
        return {_M + k: (v if isinstance(v, str) else json.dumps(v)) for k, v in d.items()}

    @classmethod
    def from_strings(cls, md: Mapping[str, str], where: str = "checkpoint") -> "CheckpointMeta":
        if not md or FORMAT_KEY not in md:
            raise AnyDressingError(
                f"{where} has no AnyDressing metadata ('{_M}format_version'); it is not an AnyDressing checkpoint. "
                "MagicClothing / IMAGDressing files: convert them with `python -m anydressing_core.convert`.")
        try:
            version = int(md[FORMAT_KEY])
        except ValueError:
            raise AnyDressingError(f"{where}: format_version {md[FORMAT_KEY]!r} is not a number") from None
        if version > FORMAT_VERSION:
            raise AnyDressingError(f"{where} is format version {version}; this pack reads up to {FORMAT_VERSION}. "
                                   "Update ComfyUI-AnyDressing.")

        def get(name, default, parse=json.loads):
            raw = md.get(_M + name)
            if raw is None:
                return default
            try:
                return parse(raw)
            except (ValueError, TypeError):
                raise AnyDressingError(f"{where}: metadata {_M}{name} = {raw!r} cannot be read") from None

        meta = cls(
            base=md.get(_M + "base", "sd15"),
            layers=[key_from_str(s) for s in get("layers", [])],
            slots=list(get("slots", [])),
            lora_rank=int(get("lora_rank", 0)),
            lora_alpha=float(get("lora_alpha", 0.0)),
            lora_targets=list(get("lora_targets", list(LORA_TARGETS))),
            default_lambda=float(get("default_lambda", 0.7)),
            form=md.get(_M + "form", DAForm.SEPARATE),
            garments_net_context=md.get(_M + "garments_net_context", "none"),
            unet_config=get("unet_config", None),
            provenance=get("provenance", {}),
            licence=md.get(_M + "licence", ""),
            base_checkpoint=get("base_checkpoint", {}) or {},
            base_fingerprint=get("base_fingerprint", None),
            format_version=version,
        )
        meta.check(where)
        return meta

    def check(self, where: str = "checkpoint"):
        problems = []
        if self.base not in BASES:
            problems.append(f"base {self.base!r} is not one of {BASES}")
        if self.form not in DAForm.ALL:
            problems.append(f"form {self.form!r} is not one of {DAForm.ALL}")
        if self.garments_net_context not in CONTEXTS:
            problems.append(f"garments_net_context {self.garments_net_context!r} is not one of {CONTEXTS}")
        if len(set(self.slots)) != len(self.slots):
            problems.append(f"slots {self.slots} repeat a name")
        if self.slots and (self.lora_rank <= 0 or self.lora_alpha <= 0):
            problems.append(f"slots given but lora_rank {self.lora_rank} / lora_alpha {self.lora_alpha} are not positive")
        if [t for t in self.lora_targets if t not in LORA_TARGETS]:
            problems.append(f"lora_targets {self.lora_targets} are not a subset of {LORA_TARGETS}")
        if not 0.0 <= self.default_lambda <= 2.0:
            problems.append(f"default_lambda {self.default_lambda} is outside 0..2")
        if not self.layers:
            problems.append("layers is empty: the file does not say which self-attention layers it was made for")
        if problems:
            raise AnyDressingError(f"{where}: bad metadata: " + "; ".join(problems))


def validate(shapes: Mapping[str, Sequence[int]], meta: CheckpointMeta, where: str = "checkpoint") -> Dict[BlockKey, int]:
    """Check tensor names and shapes against the metadata; return ``{layer: C}``.

    Works on shapes only, so a 3 GB file is checked before anything is read.
    """
    foreign = [n for n in shapes if not n.startswith(PREFIXES)]
    if foreign:
        raise AnyDressingError(
            f"{where} has {len(foreign)} tensors outside the AnyDressing layout ({', '.join(PREFIXES)}), e.g. "
            f"{sorted(foreign)[:5]}; it is not an AnyDressing checkpoint (or it was edited). Peer weights go through "
            "`python -m anydressing_core.convert`.")
    layers = list(meta.layers)
    named = layer_keys(shapes)
    strays = [key_to_str(k) for k in named if k not in layers]
    if strays:
        raise AnyDressingError(f"{where} has GFE/DA tensors for layers {strays[:6]} that its metadata does not list "
                               f"({len(layers)} layers listed)")
    channels: Dict[BlockKey, int] = {}
    problems: List[str] = []
    s, r = len(meta.slots), meta.lora_rank
    has_gfe = any(n.startswith("gfe.") for n in shapes)
    if meta.slots and not has_gfe:
        problems.append(f"metadata lists slots {meta.slots} but the file has no gfe.* tensors")
    if has_gfe and not meta.slots:
        problems.append("the file has gfe.* tensors but no slots in its metadata")
    has_da = any(n.startswith("da.") for n in shapes)
    for key in layers:
        ks = key_to_str(key)
        if has_gfe and meta.slots:
            for t in meta.lora_targets:
                a, b = shapes.get(f"gfe.{ks}.{t}.lora_A"), shapes.get(f"gfe.{ks}.{t}.lora_B")
                if a is None or b is None:
                    problems.append(f"gfe.{ks}.{t}.lora_A/lora_B missing")
                    continue
                a, b = list(a), list(b)
                c = a[2] if len(a) == 3 else -1
                if len(a) != 3 or a[:2] != [s, r] or b != [s, c, r]:
                    problems.append(f"gfe.{ks}.{t}: lora_A {a} / lora_B {b}, expected [{s}, {r}, C] / [{s}, C, {r}] "
                                    f"for {s} slots at rank {r}")
                    continue
                if channels.setdefault(key, c) != c:
                    problems.append(f"gfe.{ks}.{t} has {c} channels, other tensors of the layer {channels[key]}")
        if has_da:
            for name in (f"da.{ks}.to_k", f"da.{ks}.to_v"):
                shp = shapes.get(name)
                if shp is None:
                    problems.append(f"{name} missing")
                    continue
                shp = list(shp)
                if len(shp) != 2 or shp[0] != shp[1]:
                    problems.append(f"{name} is {shp}, expected a square [C, C]")
                elif channels.setdefault(key, shp[0]) != shp[0]:
                    problems.append(f"{name} has {shp[0]} channels, the layer's GFE has {channels[key]}")
        if len(problems) > 12:
            break
    unet_keys = [n for n in shapes if n.startswith("garments_net.")]
    is_sdxl = any(n.startswith("garments_net.add_embedding.") for n in unet_keys)
    if unet_keys and is_sdxl != (meta.base == "sdxl"):
        problems.append(f"metadata says base {meta.base!r} but the GarmentsNet weights are "
                        f"{'SDXL' if is_sdxl else 'SD1.5'}-shaped")
    if problems:
        raise AnyDressingError(f"{where} does not match its own metadata: " + "; ".join(problems[:12]))
    return channels


class AnyDressingAdapter:
    """Trained (or imported) AnyDressing weights: GFE LoRA, DA projections, GarmentsNet UNet weights.

    ``garments_net`` holds the GarmentsNet UNet state dict in diffusers keys (None = zero-shot:
    GarmentsNet is the base UNet).  A zero-shot adapter has no ``gfe`` and no ``projections``:
    Wk' = Wk, Wv' = Wv [choice: the zero-shot mode, GarmentsNet = the base UNet].
    """

    def __init__(self, meta: CheckpointMeta, gfe: Optional[GFELoRA] = None, projections: Optional[DAProjections] = None,
                 garments_net: Optional[Dict[str, torch.Tensor]] = None, resampler: Optional[Dict[str, torch.Tensor]] = None,
                 name: str = ""):
        self.meta = meta
        self.gfe = gfe
        self.projections = projections
        self.garments_net = garments_net
        self.resampler = resampler
        self.name = name
        #: True when the file had GarmentsNet weights (they may have been handed to the host already).
        self.has_garments_net = garments_net is not None
        #: ``[1, S, D]`` context for GarmentsNet's attn2 when ``meta.garments_net_context`` is not "none"
        #: (MagicClothing: the empty prompt's text embedding); the host sets it (the loader, from CLIP).
        self.garment_context: Optional[torch.Tensor] = None
        #: whatever the host uses to manage these weights' memory (ComfyUI: a ModelPatcher of the GFE LoRA)
        self.host_handle: Any = None

    # --- what the nodes and the pipeline ask -------------------------------------------------
    @property
    def form(self) -> str:
        return self.meta.form

    @property
    def default_strength(self) -> float:
        return self.meta.default_lambda

    @property
    def layers(self) -> List[BlockKey]:
        return list(self.meta.layers)

    @property
    def zero_shot(self) -> bool:
        return self.gfe is None and self.projections is None and not self.has_garments_net

    def describe(self) -> str:
        parts = [f"{self.meta.base}", f"{len(self.meta.layers)} layers", f"form {self.form}"]
        parts.append(f"GFE slots {self.meta.slots} r{self.meta.lora_rank}" if self.gfe else "no GFE")
        parts.append("trained Wk'/Wv'" if self.projections else "Wk'=Wk, Wv'=Wv")
        parts.append("own GarmentsNet" if self.has_garments_net else "GarmentsNet = base UNet")
        return ", ".join(parts)

    def check_layers(self, channels: Mapping[BlockKey, Optional[int]], what: str = "this MODEL", widths: bool = True):
        """The model's attn1 layers ``{key: C}`` must be exactly the adapter's layers (and widths)."""
        mine = {k: c for k, c in (self._channels() or {}).items()}
        missing = [key_to_str(k) for k in channels if k not in self.meta.layers]
        extra = [key_to_str(k) for k in self.meta.layers if k not in channels]
        if missing or extra:
            guess = "SDXL" if any(k[0] == "input" and k[2] > 0 for k in channels) else "SD1.5-like"
            raise AnyDressingError(
                f"adapter {self.name or ''} was made for a {self.meta.base} UNet with {len(self.meta.layers)} self-attention "
                f"layers, but {what} has {len(channels)} ({guess})"
                + (f"; layers the adapter lacks: {missing[:5]}" if missing else "")
                + (f"; adapter layers the model lacks: {extra[:5]}" if extra else "")
                + ". Use AnyDressing weights made for this base model.")
        if not widths:
            return
        wrong = [f"{key_to_str(k)} ({mine[k]} vs {c})" for k, c in channels.items() if k in mine and mine[k] != c]
        if wrong:
            raise AnyDressingError(f"adapter layer widths do not match {what} (adapter vs model): {wrong[:5]}. "
                                   f"The adapter is for {self.meta.base}; use weights made for this base model.")

    def _channels(self) -> Dict[BlockKey, int]:
        out = {}
        if self.projections is not None:
            for k in self.projections.keys:
                out[k] = int(self.projections.weights(k)[0].shape[0])
        if self.gfe is not None:
            for k in self.gfe.keys:
                out.setdefault(k, int(self.gfe.layers[key_to_str(k).replace(".", "_")][f"{self.gfe.targets[0]}_A"].shape[-1]))
        return out

    def slot_ids(self, slots: Sequence[str], device=None) -> Optional[torch.Tensor]:
        """LoRA set index per garment (shared by garments of one slot), or None without GFE."""
        if self.gfe is None:
            return None
        return self.gfe.slot_ids(slots, device)

    def encode_hooks(self, slots: Sequence[str], attention: Callable = sdpa_attention, device=None) -> Optional[GFEHooks]:
        """GFE for a host's GarmentsNet pass over garments of ``slots`` (one per batch row); None without GFE."""
        if self.gfe is None:
            return None
        return GFEHooks(self.gfe, self.gfe.slot_ids(slots, device), attention)

    def attach(self, features: GarmentFeatures) -> GarmentFeatures:
        """``features`` carrying this adapter's form and, with trained Wk'/Wv', its projections (K', V' are
        computed from them once per sampling run)."""
        out = self.projections.attach(features) if self.projections is not None else features.to()
        out.form = self.form
        return out

    def to(self, device=None, dtype=None) -> "AnyDressingAdapter":
        if self.gfe is not None:
            self.gfe.to(device=device, dtype=dtype)
        if self.projections is not None:
            self.projections.to(device=device, dtype=dtype)
        return self

    def without_garments_net(self) -> "AnyDressingAdapter":
        """The same adapter without the GarmentsNet tensors (once the host holds them as a MODEL)."""
        out = AnyDressingAdapter(self.meta, self.gfe, self.projections, None, self.resampler, self.name)
        out.has_garments_net = self.has_garments_net
        out.garment_context = self.garment_context
        out.host_handle = self.host_handle
        return out

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f"AnyDressingAdapter({self.name!r}: {self.describe()})"

    # --- format ---------------------------------------------------------------------------------
    def tensors(self) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        if self.garments_net is not None:
            out.update({f"garments_net.{k}": v for k, v in self.garments_net.items()})
        if self.gfe is not None:
            out.update(self.gfe.tensors())
        if self.projections is not None:
            out.update(self.projections.tensors())
        if self.resampler is not None:
            out.update({f"resampler.{k}": v for k, v in self.resampler.items()})
        return {k: v.detach().contiguous() for k, v in out.items()}

    def save(self, path: str):
        save_checkpoint(path, self.tensors(), self.meta)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: CheckpointMeta, name: str = "",
                     where: str = "checkpoint") -> "AnyDressingAdapter":
        validate({k: list(v.shape) for k, v in tensors.items()}, meta, where)
        gfe = None
        if meta.slots:
            gfe = GFELoRA.from_tensors({k: v for k, v in tensors.items() if k.startswith("gfe.")}, meta.slots,
                                       meta.lora_rank, meta.lora_alpha, meta.lora_targets)
        da = {k: v for k, v in tensors.items() if k.startswith("da.")}
        projections = DAProjections.from_tensors(da) if da else None
        unet = {k[len("garments_net."):]: v for k, v in tensors.items() if k.startswith("garments_net.")} or None
        res = {k[len("resampler."):]: v for k, v in tensors.items() if k.startswith("resampler.")} or None
        return cls(meta, gfe, projections, unet, res, name)


def save_checkpoint(path: str, tensors: Mapping[str, torch.Tensor], meta: CheckpointMeta):
    """Validate, then write ``tensors`` with ``meta`` as safetensors."""
    from safetensors.torch import save_file

    meta.check(path)
    validate({k: list(v.shape) for k, v in tensors.items()}, meta, path)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, metadata=meta.to_strings())


def sniff_format(path: str) -> str:
    """What a weight file is by its first bytes, never its name: safetensors, torch-zip, pickle or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"  # torch.save's zip container holds a pickle
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header size, then the JSON header
    return "unknown"


def read_safetensors(path: str, load: bool = True) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """``(tensors or shapes, metadata)`` of a safetensors file, with a clear error for bad files."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise AnyDressingError(f"no file at {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            md = f.metadata() or {}
            if load:
                data = {k: f.get_tensor(k) for k in f.keys()}
            else:
                data = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types (SafetensorError, OSError)
        size = os.path.getsize(path)
        if sniff_format(path) in ("pickle", "torch-zip"):
            raise AnyDressingError(
                f"{path} is a pickled torch file, whatever its name says. Pickles can run code, so they are never "
                "loaded directly: convert it with `python -m anydressing_core.convert IN -o OUT.safetensors`.") from None
        raise AnyDressingError(
            f"{path} ({size} bytes) is not a readable safetensors file: truncated, corrupted or another format "
            f"(safetensors says: {e}). Download or convert it again; pickles (.pt/.pth/.bin) go through "
            "`python -m anydressing_core.convert`.") from None
    return data, md


def load_checkpoint(path: str, load_garments_net: bool = True) -> AnyDressingAdapter:
    """Read and validate an AnyDressing checkpoint (metadata and shapes first, then tensors).

    Only files with AnyDressing metadata; :func:`.weights.load_weights` also imports peer layouts.
    """
    shapes, md = read_safetensors(path, load=False)
    meta = CheckpointMeta.from_strings(md, path)
    validate(shapes, meta, path)
    tensors, _ = read_safetensors(path)
    if not load_garments_net:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("garments_net.")}
    return AnyDressingAdapter.from_tensors(tensors, meta, os.path.basename(path), path)


def export(garments_net=None, dressing=None, *, base: Optional[str] = None, default_lambda: float = 0.7,
           form: Optional[str] = None, provenance: Optional[dict] = None, include_unet: bool = True,
           licence: str = "", base_checkpoint: Optional[dict] = None,
           base_fingerprint: Optional[dict] = None) -> AnyDressingAdapter:
    """Adapter from trained diffusers pieces (:mod:`.diffusers_model` GarmentsNet / DressingAttention).

    ``adapter.save(path)`` writes it.  The GarmentsNet UNet is stored with its diffusers keys.
    ``base`` defaults to the GarmentsNet UNet's shape (:func:`.keys.base_shape`), else ``"sd15"``.
    """
    layers = list(garments_net.keys if garments_net is not None else dressing.keys)
    gfe = garments_net.gfe if garments_net is not None else None
    projections = dressing.projections if dressing is not None else None
    unet_sd, unet_config, context = None, None, "none"
    if garments_net is not None:
        context = garments_net.context
        unet_config = dict(garments_net.unet.config)
        if base is None:
            base = base_shape(garments_net.unet.config)
        if include_unet:
            unet_sd = {k: v.detach() for k, v in garments_net.unet.state_dict().items()}
    meta = CheckpointMeta(
        base=base or "sd15", layers=layers, slots=list(gfe.slots) if gfe else [], lora_rank=gfe.rank if gfe else 0,
        lora_alpha=gfe.alpha if gfe else 0.0, lora_targets=list(gfe.targets) if gfe else list(LORA_TARGETS),
        default_lambda=default_lambda, form=form or (dressing.form if dressing is not None else DAForm.SEPARATE),
        garments_net_context=context, unet_config=_jsonable(unet_config), provenance=provenance or {}, licence=licence,
        base_checkpoint=dict(base_checkpoint or {}), base_fingerprint=base_fingerprint)
    return AnyDressingAdapter(meta, gfe, projections, unet_sd)


def _jsonable(config):
    if config is None:
        return None
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
