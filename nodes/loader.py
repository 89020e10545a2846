"""AnyDressing Loader: an AnyDressing (or importable peer) weight file -> GarmentsNet MODEL + ANYDRESSING adapter."""

from __future__ import annotations

import logging
import os

from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentsNetContext
from ..anydressing_core.weights import load_weights
from . import adapter as adapter_side
from .common import CATEGORY, Adapter, AnyDressingNode, model_channels
from .host_api import folder_paths, io

log = logging.getLogger(__name__)

FOLDER = "anydressing"
#: Only safetensors are listed and loaded; pickles go through the converter.
EXTENSIONS = (".safetensors", ".sft")


def register_folder():
    """``models/anydressing`` (plus any ``anydressing:`` entry of extra_model_paths.yaml)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


register_folder()


def weight_files() -> list:
    return [name for name in folder_paths.get_filename_list(FOLDER) if name.lower().endswith(EXTENSIONS)]


def load_adapter(anydressing_name, model=None, clip=None):
    """``(GarmentsNet MODEL, adapter)`` from a file in the anydressing model folders."""
    path = folder_paths.get_full_path(FOLDER, anydressing_name)
    if path is None:
        raise AnyDressingError(f"{anydressing_name!r} is not in any anydressing folder "
                               f"({folder_paths.get_folder_paths(FOLDER)})")
    adapter = load_weights(path)
    if model is not None:
        adapter_side.check_base(adapter, model)
        adapter_side.check_adapter(adapter, model_channels(model), "the connected MODEL")
    garments_net = adapter_side.garments_net_patcher(adapter, model)
    if adapter.garments_net is not None:
        adapter_side.check_adapter(adapter, model_channels(garments_net), "its own GarmentsNet")
    adapter = adapter.without_garments_net()
    context = adapter.meta.garments_net_context
    if context != GarmentsNetContext.NONE:
        if clip is not None:
            # "image_tokens" (IMAGDressing): AnyDressing Encode Garments runs the resampler when a CLIP vision model is
            # connected to it; the empty prompt stands in otherwise [choice]
            adapter.garment_context = clip.encode_from_tokens(clip.tokenize(""))
        else:
            log.warning("AnyDressing: %s was trained with GarmentsNet context %r; connect the checkpoint's CLIP "
                        "to the loader, otherwise its cross-attention is removed and garments transfer worse",
                        anydressing_name, context)
    log.info("AnyDressing: loaded %s (%s)", anydressing_name, adapter.describe())
    return garments_net, adapter


class AnyDressingLoader(AnyDressingNode):
    node_id = "AnyDressingLoader"
    title = "AnyDressing Loader"
    menu = f"{CATEGORY}/loaders"
    about = ("Loads AnyDressing weights from models/anydressing (or an 'anydressing:' folder in extra_model_paths.yaml): "
             "the GarmentsNet for AnyDressing Encode Garments and the adapter (garment LoRA per slot, trained K'/V' "
             "projections) for AnyDressing Encode Garments and AnyDressing Apply. MagicClothing .safetensors are "
             "imported on the fly; pickles (.pt/.pth) must be converted first with `python -m "
             "anydressing_core.convert`. Peer weights are non-commercial.")
    outputs = [
        io.Model.Output("garments_net", display_name="garments_net",
                        tooltip="GarmentsNet: connect to AnyDressing Encode Garments' model input. For files without "
                                "GarmentsNet weights this is the connected base MODEL."),
        Adapter.Output("adapter", display_name="adapter",
                       tooltip="The adapter: connect to the adapter input of AnyDressing Encode Garments and "
                               "AnyDressing Apply."),
    ]

    @classmethod
    def schema_inputs(cls):  # the folder's file list, read again whenever the editor asks
        return [
            io.Combo.Input("anydressing_name", options=weight_files(),
                           tooltip="An AnyDressing .safetensors in models/anydressing. Empty list: put files there (or "
                                   "add an 'anydressing:' path to extra_model_paths.yaml) and press R to refresh."),
            io.Model.Input("model", optional=True,
                           tooltip="Optional base MODEL (your SD1.5 checkpoint). Needed when the file has no "
                                   "GarmentsNet weights (GarmentsNet is then the base UNet); also checks the adapter "
                                   "fits it."),
            io.Clip.Input("clip", optional=True,
                          tooltip="Optional CLIP of your checkpoint. Weights whose GarmentsNet was trained with a text "
                                  "context (MagicClothing: the empty prompt) need it; AnyDressing's own weights do "
                                  "not."),
        ]

    @classmethod
    def validate_inputs(cls, anydressing_name=None):
        if anydressing_name is not None and anydressing_name not in weight_files():
            return (f"{anydressing_name!r} is not in any anydressing folder ({folder_paths.get_folder_paths(FOLDER)}); "
                    "put the file there (only .safetensors are listed) and press R to refresh")
        return True

    @classmethod
    def execute(cls, anydressing_name, model=None, clip=None) -> io.NodeOutput:
        return io.NodeOutput(*load_adapter(anydressing_name, model, clip))
