"""The tiny random checkpoint the demos fall back to without a real one (built by ``devtools/tiny_models.py``).

The builder imports ComfyUI, so it runs in a subprocess on ComfyUI's own Python; the runner never imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import RunnerError
from .server import PACK_DIR

TINY_CACHE = Path(os.environ.get("ANYDRESSING_TINY_MODELS", Path.home() / ".cache/anydressing/tiny-models"))

NOISE_BANNER = """
=====================================================================================
 No SD1.5 checkpoint configured: the demo uses a TINY RANDOM checkpoint built locally.
 Everything runs for real (loaders, garment encoding, Dressing-Attention, sampling),
 but the PICTURES ARE NOISE. For a real result:
     python -m anydressing_run demo --checkpoint /path/to/sd15.safetensors
 or  export ANYDRESSING_CHECKPOINT=/path/to/sd15.safetensors
=====================================================================================
"""


def build_tiny(comfyui: Path, python: str | None = None) -> Path:
    """Build (or reuse) the tiny random checkpoint in a subprocess that imports ComfyUI; returns its path."""
    cmd = [python or sys.executable, "-m", "devtools.tiny_models", str(TINY_CACHE), "--comfyui", str(comfyui)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PACK_DIR)
    if proc.returncode != 0:
        raise RunnerError("could not build the tiny random checkpoint:\n" + (proc.stderr or proc.stdout)[-3000:],
                          exit_code=4)
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(paths["checkpoint"])
