"""Headless runner for ComfyUI-AnyDressing workflows (``python -m anydressing_run`` / ``anydressing-run``).

Talks to ComfyUI only over its HTTP/websocket API and starts one as a subprocess when asked, so this package
imports no ComfyUI module and runs from any Python with the standard library (``websocket-client`` gives the
live progress bar; without it the runner polls).
"""

from .errors import RunnerError

__all__ = ["RunnerError"]
