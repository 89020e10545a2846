"""ComfyUI-AnyDressing: multi-garment virtual dressing (AnyDressing) for ComfyUI.

Node API choice: the classic ``NODE_CLASS_MAPPINGS`` API.  It is stable across ComfyUI releases,
while ``comfy_api.latest`` is still marked unstable (HOST.md); a module defining both would have its
``comfy_entrypoint`` ignored anyway.  README.md says more.
"""

import importlib.util
import logging

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported outside ComfyUI (a test runner collecting this folder, or the CLIs): no nodes to register.
    logging.getLogger(__name__).debug("ComfyUI not importable: AnyDressing nodes not registered")
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
