"""Development and test support, not part of the product: the in-process host loader and the tiny random
model builders that the tests, the benchmarks and the offline demo share.

Unlike ``anydressing_core`` these modules import ComfyUI (after :func:`comfy_host.prepare` found it).
ComfyUI never imports this package: the pack's ``__init__.py`` loads only ``nodes/``.
"""
