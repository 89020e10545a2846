"""AnyDressingLoader: an AnyDressing checkpoint -> GarmentsNet MODEL + ANYDRESSING adapter.

Also the ComfyUI side of the adapter for Encode Garments / Apply AnyDressing:

* :func:`adapter_encode_options` adds the GFE LoRA hooks to the transformer_options of the
  GarmentsNet pass (attn1 patch, attn1 replace, attn1 output patch per layer).
* :func:`adapter_features` checks the adapter against a MODEL and projects K'/V' once (encode).
"""

from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from comfy.ldm.modules.attention import optimized_attention

from ..anydressing_core.bases import check_same_base, name
from ..anydressing_core.checkpoint import AnyDressingAdapter, load_checkpoint
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentFeatures
from ..anydressing_core.importers import infer_unet_config
from ..anydressing_core.keys import ldm_unet_config
from .common import ANYDRESSING, CATEGORY, attn1_modules, diffusion_model_of, model_base

log = logging.getLogger(__name__)

FOLDER = "anydressing"
EXTENSIONS = {".safetensors", ".sft"}  # STYLE 13: pickles only through the converter


def register_folder():
    """``models/anydressing`` (plus any ``anydressing:`` entry of extra_model_paths.yaml)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[FOLDER]
        if default not in paths:
            paths.append(default)
        if isinstance(exts, set):
            exts.update(EXTENSIONS)
        else:
            folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))


register_folder()


def model_channels(model) -> dict:
    """``{key: C}`` attn1 widths of a ComfyUI MODEL."""
    return {k: m.to_q.in_features for k, m in attn1_modules(diffusion_model_of(model, "model")).items()}


def garments_net_patcher(adapter: AnyDressingAdapter, base_model=None, dtype=None):
    """The GarmentsNet as a ComfyUI ModelPatcher (ComfyUI's memory manager loads and offloads it).

    Without GarmentsNet weights in the file (zero-shot / DA-only weights) GarmentsNet IS the base
    UNet [choice, METHOD.md]: the connected base MODEL is returned (cloned).
    """
    if adapter.garments_net is None:
        if base_model is None:
            raise AnyDressingError(
                f"{adapter.name or 'this file'} has no GarmentsNet weights (zero-shot or projections only): GarmentsNet "
                "is the base UNet. Connect your checkpoint's MODEL to the loader's 'model' input (or use that MODEL "
                "directly in Encode Garments).")
        return base_model.clone()
    config = adapter.meta.unet_config or infer_unet_config(adapter.garments_net)
    mapping = comfy.utils.unet_to_diffusers(ldm_unet_config(config))  # diffusers key -> LDM key
    unknown = [k for k in adapter.garments_net if k not in mapping]
    if unknown:
        raise AnyDressingError(f"GarmentsNet weights of {adapter.name} have keys ComfyUI's UNet map does not know: "
                               f"{unknown[:5]} ({len(unknown)} in all)")
    sd = {mapping[k]: v for k, v in adapter.garments_net.items()}
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype} if dtype else {})
    if model is None:
        raise AnyDressingError(
            f"ComfyUI could not detect the GarmentsNet UNet of {adapter.name} as a known model (its config: "
            f"{ldm_unet_config(config)}); SD1.5 needs model_channels 320 and context_dim 768")
    return model


def _comfy_attention(q, k, v, heads, mask=None, **_):
    return optimized_attention(q, k, v, heads, mask=mask)


def adapter_encode_options(adapter, options: dict, slots, keys, model=None, context=None) -> dict:
    """Add the adapter's GFE to the transformer_options of a GarmentsNet pass (in place; returned).

    ``options`` must already hold fresh ``patches`` / ``patches_replace`` dicts (Encode Garments'
    ``garments_net_options`` builds them); ``slots`` give each batch row's slot.  The attn1
    replace this installs runs only in the garment pass, never while sampling.  Weights whose
    GarmentsNet reads a text context (MagicClothing) get attn2 back, fed ``adapter.garment_context``
    (needs ``model``, whose own attn2 patches are restored).
    """
    if adapter is None:
        return options
    check_adapter(adapter, {k: None for k in keys}, "the GarmentsNet MODEL", widths=False)
    context = context if context is not None else adapter.garment_context
    if context is not None and model is not None:
        _restore_attn2(options, model, context)
    hooks = adapter.encode_hooks(list(slots), attention=_comfy_attention)
    if hooks is None:
        return options
    patches = options.setdefault("patches", {})
    patches["attn1_patch"] = list(patches.get("attn1_patch", [])) + [hooks.attn1_patch]
    patches["attn1_output_patch"] = list(patches.get("attn1_output_patch", [])) + [hooks.attn1_output_patch]
    replace = options.setdefault("patches_replace", {})
    replace["attn1"] = dict(replace.get("attn1", {}))
    replace["attn1"].update({key: hooks.attn1_replace for key in keys})
    return options


class _GarmentContext:
    """attn2 patch: GarmentsNet's cross-attention reads the weights' own context (e.g. the empty prompt)."""

    def __init__(self, context):
        self.context = context

    def __call__(self, n, context, value, extra_options):
        ctx = self.context.to(device=n.device, dtype=n.dtype)  # [1, S, D] shared, or [N, S, D] one per garment
        ctx = ctx.expand(n.shape[0], -1, -1) if ctx.shape[0] == 1 else ctx
        return n, ctx, ctx

    def __deepcopy__(self, memo):
        return self


def _restore_attn2(options: dict, model, context):
    """Undo the [paper] attn2 removal of the garment pass for weights trained with a text context."""
    base = model.model_options.get("transformer_options", {})
    patches = options.setdefault("patches", {})
    patches["attn2_output_patch"] = list(base.get("patches", {}).get("attn2_output_patch", []))
    patches["attn2_patch"] = list(base.get("patches", {}).get("attn2_patch", [])) + [_GarmentContext(context)]
    options.setdefault("patches_replace", {})["attn2"] = dict(base.get("patches_replace", {}).get("attn2", {}))


def check_adapter(adapter, channels: dict, what: str = "this MODEL", widths: bool = True):
    if not isinstance(adapter, AnyDressingAdapter):
        raise AnyDressingError(f"'adapter' must come from AnyDressing Loader (got {type(adapter).__name__})")
    adapter.check_layers(channels, what, widths=widths)


def check_adapter_for(adapter, model, what: str = "the MODEL"):
    """The adapter must be made for ``model``'s base (named in the error) and fit its layers and widths."""
    if isinstance(adapter, AnyDressingAdapter):
        mine = model_base(model)
        weights = f"the AnyDressing weights {adapter.name}" if adapter.name else "the AnyDressing weights"
        check_same_base(f"{weights} are made for", adapter.meta.base, mine,
                        f"Load AnyDressing weights made for {name(mine)} (base={mine}), or sample with an "
                        f"{name(adapter.meta.base)} checkpoint.")
    check_adapter(adapter, model_channels(model), what)


def adapter_features(adapter, features: GarmentFeatures, model, dtype=None) -> GarmentFeatures:
    """Features carrying the adapter's form and, with trained projections, K'/V' (once, not per step).

    Projected on the model's load device, then kept on ComfyUI's intermediate device like the tokens.
    """
    if adapter is None:
        return features
    check_adapter_for(adapter, model, "the MODEL")
    if features.kv is not None:
        return features
    out = adapter.project(features, dtype=dtype, device=getattr(model, "load_device", None))
    return out.to(device=comfy.model_management.intermediate_device())


class AnyDressingLoader:
    DESCRIPTION = (
        "Loads AnyDressing weights from models/anydressing (or an 'anydressing:' folder in extra_model_paths.yaml): "
        "the GarmentsNet for Encode Garments and the adapter (garment LoRA per slot, trained K'/V' projections) for "
        "Encode Garments and Apply AnyDressing. MagicClothing .safetensors are imported on the fly; pickles "
        "(.pt/.pth) must be converted first with `python -m anydressing_core.convert`. Peer weights are non-commercial."
    )
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", ANYDRESSING)
    RETURN_NAMES = ("garments_net", "adapter")
    OUTPUT_TOOLTIPS = (
        "GarmentsNet: connect to Encode Garments' model input. For files without GarmentsNet weights this is the "
        "connected base MODEL.",
        "The adapter: connect to the adapter input of Encode Garments and Apply AnyDressing.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "anydressing_name": (folder_paths.get_filename_list(FOLDER), {
                    "tooltip": "An AnyDressing .safetensors in models/anydressing. Empty list: put files there (or add an "
                               "'anydressing:' path to extra_model_paths.yaml) and press R to refresh."}),
            },
            "optional": {
                "model": ("MODEL", {
                    "tooltip": "Optional base MODEL (your SD1.5 checkpoint). Needed when the file has no GarmentsNet "
                               "weights (GarmentsNet is then the base UNet); also checks the adapter fits it."}),
                "clip": ("CLIP", {
                    "tooltip": "Optional CLIP of your checkpoint. Weights whose GarmentsNet was trained with a text "
                               "context (MagicClothing: the empty prompt) need it; AnyDressing's own weights do not."}),
            },
        }

    def load(self, anydressing_name, model=None, clip=None):
        path = folder_paths.get_full_path(FOLDER, anydressing_name)
        if path is None:
            raise AnyDressingError(f"{anydressing_name!r} is not in any anydressing folder "
                                   f"({folder_paths.get_folder_paths(FOLDER)})")
        adapter = load_checkpoint(path)
        if model is not None:
            check_adapter_for(adapter, model, "the connected MODEL")
        gnet = garments_net_patcher(adapter, model)
        if adapter.garments_net is not None:
            check_adapter(adapter, model_channels(gnet), "its own GarmentsNet")
        adapter = adapter.without_garments_net()
        context = adapter.meta.garments_net_context
        if context != "none":
            if clip is not None:
                # "image_tokens" (IMAGDressing): Encode Garments runs the resampler when a CLIP vision model is
                # connected to it; the empty prompt stands in otherwise [choice]
                adapter.garment_context = clip.encode_from_tokens(clip.tokenize(""))
            else:
                log.warning("AnyDressing: %s was trained with GarmentsNet context %r; connect the checkpoint's CLIP "
                            "to the loader, otherwise its cross-attention is removed and garments transfer worse",
                            anydressing_name, context)
        log.info("AnyDressing: loaded %s (%s)", anydressing_name, adapter.describe())
        return (gnet, adapter)


NODE_CLASS_MAPPINGS = {"AnyDressingLoader": AnyDressingLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"AnyDressingLoader": "Load AnyDressing Weights"}
