"""Every ComfyUI symbol this pack uses, imported in one place (``host_contract.py`` says why for each).

The other modules of ``nodes/`` import ComfyUI only through this one (a test enforces it), and
``tests/nodes/test_host_contract.py`` checks every entry of ``host_contract.CONTRACT`` against the installed ComfyUI:
that it exists, is callable where we call it, and that its signature accepts the arguments we pass.  When a
ComfyUI release changes one of them, exactly one named test fails, with the symbol's name, instead of a
user's graph.  Nothing here is private (``_``-prefixed) and nothing is monkey-patched.

The node API is ComfyUI's versioned V3 schema, imported from the pinned version ``comfy_api.v0_0_2`` (tested
with ComfyUI 0.3.64).  A host without that version falls back to ``comfy_api.latest`` with a warning that
names the tested versions, so graphs keep loading while the pack is updated.
"""

from __future__ import annotations

import logging

from .host_contract import CONTRACT, CONVENTIONS, PINNED_NODE_API, HostSymbol

log = logging.getLogger(__name__)

#: The node-API module in use: the pinned version, or ``comfy_api.latest`` on a host without it.
NODE_API = PINNED_NODE_API

try:
    from comfy_api.v0_0_2 import ComfyExtension, io
except ImportError:  # a host that dropped the pinned version: keep the nodes loading, say why
    from comfy_api.latest import ComfyExtension, io

    NODE_API = "comfy_api.latest"
    log.warning("AnyDressing: this ComfyUI has no comfy_api.v0_0_2 (the node API the pack was tested with, "
                "ComfyUI 0.3.64); using comfy_api.latest. Update ComfyUI-AnyDressing if nodes misbehave.")

import comfy.model_base as model_base
import comfy.model_management as model_management
import comfy.model_patcher as model_patcher
import comfy.patcher_extension as patcher_extension
import comfy.sample as sample
import comfy.samplers as samplers
import comfy.sd as sd
import comfy.supported_models as supported_models
import comfy.utils as utils
import folder_paths
from comfy.ldm.modules.attention import optimized_attention

__all__ = ["ComfyExtension", "io", "model_base", "model_management", "model_patcher", "patcher_extension", "sample",
           "samplers", "sd", "supported_models", "utils", "folder_paths", "optimized_attention", "CONTRACT", "CONVENTIONS",
           "HostSymbol", "NODE_API", "PINNED_NODE_API"]
