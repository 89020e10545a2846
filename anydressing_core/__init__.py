"""AnyDressing core: pure PyTorch (+ diffusers) implementation of the method.

This package never imports ComfyUI (``comfy``, ``folder_paths``, ``nodes``, ``server``,
``comfy_api``); ``tests/core/test_layering.py`` enforces it.  The ComfyUI nodes in
``nodes/`` and the diffusers pipeline both call the math defined here.
"""

__version__ = "0.1.0"
