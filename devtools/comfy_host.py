"""Load the host ComfyUI, and this pack the way ComfyUI loads a custom node folder, in the current process.

    host = InProcessHost()                         # CPU mode unless gpu=True
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name="tiny.safetensors")
    patch = host.module("nodes.patch")            # a submodule of the loaded pack

The host is found like the runner finds it (``$COMFYUI_PATH``, else ``~/ComfyUI``, else the ComfyUI whose
``custom_nodes`` holds this pack).  :func:`prepare` must run before anything imports
``comfy.model_management``: that import picks the device.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

from anydressing_run.sandbox import isolate_in_process
from anydressing_run.server import find_comfyui

REPO = Path(__file__).resolve().parents[1]


def prepare(path=None, *, gpu: bool = False, attention: str = "default") -> Path:
    """Put ComfyUI at ``path`` (found when None) on ``sys.path`` and set its device and attention arguments."""
    path = Path(path) if path is not None else find_comfyui()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = not gpu  # before comfy.model_management is imported
    if attention == "pytorch":
        args.use_pytorch_cross_attention = True
    elif attention == "split":
        args.use_split_cross_attention = True
    return path


def node_outputs(result):
    """The outputs tuple of a node call, classic (tuple or ``{"result": ...}``) or V3 (``NodeOutput``)."""
    if isinstance(result, dict):
        return result["result"]
    if hasattr(result, "result") and not isinstance(result, tuple):
        return result.result
    return result


class InProcessHost:
    """ComfyUI's modules plus this pack, loaded in this process.

    The host's input, output, temp and user folders and its database are pointed at a temporary folder first
    (``anydressing_run.sandbox``), so nothing run in-process writes into the user's ComfyUI.
    """

    def __init__(self, path=None, *, gpu: bool = False, attention: str = "default"):
        self.path = prepare(path, gpu=gpu, attention=attention)
        import comfy.model_management  # noqa: F401  (device chosen now, from the arguments above)
        import folder_paths
        import nodes
        from comfy.cli_args import args

        self.sandbox = isolate_in_process(folder_paths, args=args)

        self.nodes = nodes
        self.folder_paths = folder_paths
        if not asyncio.run(nodes.load_custom_node(str(REPO))):
            raise RuntimeError("the pack failed to import into ComfyUI; see the log above")
        self.pack = sys.modules[str(REPO).replace(".", "_x_")]

    def node_class(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def run(self, node_id: str, **inputs):
        """Run a node (ours or built-in, classic or V3) and return its outputs tuple."""
        cls = self.node_class(node_id)
        return node_outputs(getattr(cls(), cls.FUNCTION)(**inputs))

    def module(self, dotted: str):
        """A submodule of the loaded pack, e.g. ``host.module("anydressing_core.attention")``."""
        return importlib.import_module(f"{self.pack.__name__}.{dotted}")
