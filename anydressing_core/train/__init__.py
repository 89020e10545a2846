"""The AnyDressing trainer (GFE + IGL + GTL) on HF accelerate.  See docs/TRAINING.md.

Importing this package does not import accelerate; :mod:`.engine` does.
"""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
