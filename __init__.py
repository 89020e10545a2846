"""ComfyUI-AnyDressing: multi-garment virtual dressing (AnyDressing) for ComfyUI.

Node API choice: the classic ``NODE_CLASS_MAPPINGS`` API.  It is stable across ComfyUI releases,
while ``comfy_api.latest`` is still marked unstable (HOST.md); a module defining both would have its
``comfy_entrypoint`` ignored anyway.  README.md says more.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
