"""The host contract as data: every ComfyUI symbol the pack uses, why, and how it is called.

Pure data (no imports of ComfyUI), so ``tests/nodes/test_host_contract.py`` can list one test per symbol when
it is collected.  ``nodes/host_api.py`` imports exactly these symbols; the other node modules use them only
through it.  Names under ``NODE_API.`` are resolved against the node-API version ``host_api`` imported;
names under ``MODEL.``, ``VAE.`` are attributes of the objects on those wires (checked on a loaded model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

#: The pinned node-API version the nodes are written against (``comfy_api/version_list.py`` of the host).
PINNED_NODE_API = "comfy_api.v0_0_2"


@dataclass(frozen=True)
class HostSymbol:
    """One host symbol: its dotted name, why we use it, and how we call it.

    ``args``: how many positional arguments we pass (``self`` not counted for methods); ``kwargs``: the
    keyword names we pass; ``call=False`` for attributes, constants and types that we only read.
    """

    name: str
    why: str
    args: int = 0
    kwargs: Tuple[str, ...] = ()
    call: bool = True
    method: bool = False


def _m(name, why, args=0, kwargs=(), **kw):
    return HostSymbol(name, why, args, tuple(kwargs), method=True, **kw)


def _f(name, why, args=0, kwargs=(), **kw):
    return HostSymbol(name, why, args, tuple(kwargs), **kw)


def _a(name, why, **kw):
    return HostSymbol(name, why, call=False, **kw)


CONTRACT: Tuple[HostSymbol, ...] = (
    # --- the node API (V3 schema)
    _a(PINNED_NODE_API, "the versioned node API the nodes are written against (tested with ComfyUI 0.3.64)"),
    _a("NODE_API.io.ComfyNode", "base class of every node (define_schema / execute / validate_inputs)"),
    _f("NODE_API.io.Schema", "node schema: id, display name, category, description, inputs, outputs",
       kwargs=("node_id", "display_name", "category", "description", "inputs", "outputs")),
    _f("NODE_API.io.NodeOutput", "what execute returns", args=2),
    _f("NODE_API.io.Custom", "typed wires GARMENTS, GARMENT_FEATURES, ANYDRESSING, ANYDRESSING_REGIONS; the pose "
       "packs' POSE_KEYPOINT", args=1),
    _f("NODE_API.io.Image.Input", "garment pictures, OpenPose pictures for regions", args=1,
       kwargs=("tooltip", "optional")),
    _f("NODE_API.io.Image.Output", "the attention-map picture", kwargs=("id", "display_name", "tooltip")),
    _f("NODE_API.io.Mask.Input", "garment masks, region masks", args=1, kwargs=("tooltip", "optional")),
    _f("NODE_API.io.Mask.Output", "one map per garment", kwargs=("id", "display_name", "tooltip")),
    _f("NODE_API.io.Model.Input", "the MODEL we patch / GarmentsNet", args=1, kwargs=("tooltip", "optional")),
    _f("NODE_API.io.Model.Output", "the patched MODEL, the loaded GarmentsNet",
       kwargs=("id", "display_name", "tooltip")),
    _f("NODE_API.io.Vae.Input", "garment pictures to latents", args=1, kwargs=("tooltip",)),
    _f("NODE_API.io.Clip.Input", "empty-prompt context for peer weights; the tokenizer of prompt regions; SDXL's "
       "garment-pass pooled embedding", args=1, kwargs=("tooltip", "optional")),
    _f("NODE_API.io.String.Input", "the prompt text and garment words of prompt regions",
       args=1, kwargs=("optional", "multiline", "default", "tooltip")),
    _f("NODE_API.io.ClipVision.Input", "IMAGDressing's garment tokens", args=1, kwargs=("tooltip", "optional")),
    _f("NODE_API.io.Conditioning.Input", "the prompt for the attention maps", args=1, kwargs=("tooltip",)),
    _f("NODE_API.io.Latent.Input", "the sampled latent for the attention maps", args=1, kwargs=("tooltip",)),
    _f("NODE_API.io.Float.Input", "strength, weights, percents",
       args=1, kwargs=("default", "min", "max", "step", "tooltip", "optional")),
    _f("NODE_API.io.Int.Input", "garment size, seed, garment token budget", args=1,
       kwargs=("default", "min", "max", "step", "tooltip", "optional")),
    _f("NODE_API.io.Combo.Input", "slot, form, CFG policy, mask mode, weight files, region source",
       args=1, kwargs=("options", "default", "tooltip", "optional")),
    _f("NODE_API.ComfyExtension", "registers the node list (comfy_entrypoint)"),
    # --- patching the UNet: public ModelPatcher setters, wrappers, additional models
    _f("comfy.model_patcher.ModelPatcher", "the MODEL wire; also wraps garment features as an extra model that "
       "ComfyUI loads and offloads (module, load_device, offload_device)", args=3),
    _m("comfy.model_patcher.ModelPatcher.clone", "patch a copy, never the MODEL we were given"),
    _m("comfy.model_patcher.ModelPatcher.set_model_attn1_replace", "Dressing-Attention on every self-attention",
       args=4),
    _m("comfy.model_patcher.ModelPatcher.set_model_attn2_patch", "prompt regions: where each garment's words are read "
       "(a list entry, so other packs' attn2 patches and replaces keep running)", args=1),
    _m("comfy.model_patcher.ModelPatcher.add_wrapper_with_key", "per-sampling-run state (K'/V' once per run)",
       args=3),
    _m("comfy.model_patcher.ModelPatcher.set_additional_models", "garment features loaded/offloaded with the UNet",
       args=2),
    _m("comfy.model_patcher.ModelPatcher.get_model_object", "model_sampling: percent -> sigma", args=1),
    _a("MODEL.model_options", "transformer_options of the garment pass, existing attn1 replaces to chain to"),
    _a("MODEL.load_device", "where the garment pass and K'/V' run"),
    _a("MODEL.offload_device", "where managed garment features rest"),
    _a("comfy.patcher_extension.WrappersMP.OUTER_SAMPLE", "opens and closes the per-run cache"),
    _f("comfy.ldm.modules.attention.optimized_attention", "the host's attention kernel for every DA call",
       args=4, kwargs=("mask", "attn_precision", "transformer_options")),
    # --- the objects on the wires: MODEL, VAE, CLIP, CLIP_VISION
    _m("comfy.model_base.BaseModel.process_latent_in", "garment latents in the UNet's scale", args=1),
    _m("comfy.model_base.BaseModel.get_dtype", "the UNet's compute dtype"),
    _a("MODEL.model.diffusion_model", "the UNet whose self-attention layers we discover"),
    _a("MODEL.model.latent_format.latent_channels", "refuse a VAE of another latent space"),
    _a("MODEL.model.model_config.unet_config", "context width and ADM size of the garment pass"),
    _a("MODEL.model.manual_cast_dtype", "compute dtype when weights are stored in another one"),
    _a("MODEL.model.model_config", "the detected model config, whose class names the MODEL's base"),
    _a("comfy.supported_models.SDXL", "the SDXL family's config class (SSD-1B, Vega, KOALA subclass it): base sdxl"),
    _a("comfy.supported_models.SD15", "SD1.5's config class: base sd15"),
    _a("comfy.model_base.SDXL", "the SDXL model class: its garment pass gets an ADM vector we build with it"),
    _m("comfy.model_base.SDXL.encode_adm", "SDXL's ADM vector of the garment pass: pooled embedding, garment size",
       kwargs=("pooled_output", "width", "height", "crop_w", "crop_h", "target_width", "target_height")),
    _m("comfy.sd.VAE.encode", "garment pictures [N, H, W, 3] -> latents", args=1),
    _a("VAE.latent_channels", "refuse a VAE of another latent space"),
    _a("VAE.first_stage_model.vae_scale", "a TAESD's latent scale, which says its base (refuse the other base's)"),
    _m("comfy.sd.CLIP.tokenize", "the empty prompt for peer weights trained with it; the prompt's token ids for "
       "prompt regions", args=1),
    _m("comfy.sd.CLIP.encode_from_tokens", "the empty prompt's embedding (and SDXL's pooled one)", args=1,
       kwargs=("return_pooled",)),
    _m("comfy.clip_vision.ClipVisionModel.encode_image", "IMAGDressing's garment image tokens", args=1),
    # --- model management
    _f("comfy.model_management.load_models_gpu", "load GarmentsNet (and an adapter's LoRA) before the garment pass",
       args=1),
    _f("comfy.model_management.intermediate_device", "where garment features wait between nodes"),
    _f("comfy.model_management.throw_exception_if_processing_interrupted", "Cancel stops a garment pass or a "
       "dressed sampling step at once"),
    _f("comfy.model_management.unload_all_models", "(tests) managed garment features leave the device"),
    _a("comfy.model_management.current_loaded_models", "(tests) managed garment features are loaded with the UNet"),
    # --- loading, sampling, progress
    _f("comfy.sd.load_diffusion_model_state_dict", "a file's own GarmentsNet as a MODEL", args=1,
       kwargs=("model_options",)),
    _f("comfy.utils.unet_to_diffusers", "diffusers -> LDM key map of a GarmentsNet UNet", args=1),
    _f("comfy.utils.ProgressBar", "progress of the garment pass", args=1),
    _m("comfy.utils.ProgressBar.update", "one step per recorded layer", args=1),
    _f("comfy.sample.prepare_noise", "re-noising for the attention maps", args=2),
    _f("comfy.sample.sample_custom", "one evaluation at the chosen noise level for the attention maps", args=8,
       kwargs=("disable_pbar", "seed")),
    _f("comfy.samplers.sampler_object", "the euler sampler of that evaluation", args=1),
    _a("folder_paths.models_dir", "default models/anydressing folder"),
    _f("folder_paths.add_model_folder_path", "register models/anydressing", args=2),
    _f("folder_paths.get_filename_list", "the Loader's file list", args=1),
    _f("folder_paths.get_full_path", "the chosen file", args=2),
    _f("folder_paths.get_folder_paths", "where we looked, in errors", args=1),
)

#: Conventions of the host that are not symbols: option keys our hooks read or write.  The contract test runs a
#: transformer block of the host with recording hooks and checks each one behaves as we rely on.
CONVENTIONS: Tuple[Tuple[str, str], ...] = (
    ("transformer_options.patches.attn1_patch", "see and record F, the normed input of self-attention (garment "
     "pass); GFE LoRA input"),
    ("transformer_options.patches.attn1_output_patch", "GFE LoRA on the output projection"),
    ("transformer_options.patches.attn2_patch", "peer weights' own GarmentsNet context; prompt regions' word maps"),
    ("transformer_options.patches.attn2_output_patch", "GarmentsNet without text cross-attention [paper]"),
    ("transformer_options.patches_replace.attn1", "Dressing-Attention, keyed (block, id, index)"),
    ("transformer_options.patches_replace.attn2", "skip the removed cross-attention of GarmentsNet"),
    ("extra_options.block", "the layer's (name, id) of an attention call"),
    ("extra_options.block_index", "the layer's index in its transformer stack"),
    ("extra_options.n_heads", "the layer's head count"),
    ("extra_options.cond_or_uncond", "which CFG branch each batch chunk is (0 = positive)"),
    ("extra_options.sigmas", "the noise level of the current step"),
    ("extra_options.original_shape", "latent size, to map region masks onto a layer's tokens"),
    ("extra_options.optimized_attention_override", "another pack's attention kernel, honoured by our calls"),
    ("outer_sample.args[0]", "the OUTER_SAMPLE wrapper's first argument is the run's noise [B, C, h, w] (automatic "
     "regions read the latent size from it)"),
)
