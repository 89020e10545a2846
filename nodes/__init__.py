"""ComfyUI nodes of AnyDressing: the only code in the pack that imports ComfyUI (through ``host_api``)."""

from .apply import AnyDressingApply
from .encode import AnyDressingEncodeGarments
from .garment import AnyDressingGarment
from .host_api import ComfyExtension
from .loader import AnyDressingLoader
from .maps import AnyDressingAttentionMaps
from .regions import AnyDressingRegions

#: Every node of the pack, in menu order.  Node ids are public (saved workflows name them) and never change.
NODES = [AnyDressingGarment, AnyDressingEncodeGarments, AnyDressingRegions, AnyDressingApply, AnyDressingAttentionMaps,
         AnyDressingLoader]


class AnyDressingExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> AnyDressingExtension:
    return AnyDressingExtension()
