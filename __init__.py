"""ComfyUI-AnyDressing: multi-garment virtual dressing (AnyDressing) for ComfyUI.

The nodes use ComfyUI's versioned V3 node API (``comfy_api.v0_0_2``) and register through
``comfy_entrypoint``; ComfyUI ignores ``comfy_entrypoint`` in a module that also defines
``NODE_CLASS_MAPPINGS``, so this module defines only the former.
"""

import importlib.util
import logging

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
else:
    # Imported outside ComfyUI (a test runner collecting this folder, or the CLIs): no nodes to register.
    logging.getLogger(__name__).debug("ComfyUI not importable: AnyDressing nodes not registered")
    __all__ = ["WEB_DIRECTORY"]
