"""ComfyUI nodes of AnyDressing: the only code in the pack that imports ComfyUI."""

from . import apply, encode, garment, loader, maps, regions

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (garment, encode, apply, maps, loader, regions):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
