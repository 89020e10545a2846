"""Session fixtures: tiny random model files (devtools/tiny_models.py) built once per machine and registered
with the in-process host's model folders.

Enable with ``pytest_plugins = ["model_fixtures"]`` in tests/conftest.py. The cache folder is
``$ANYDRESSING_TINY_MODELS`` or ``~/.cache/anydressing/tiny-models``; files are keyed by the builder version,
so a changed builder rebuilds (about 5 s, ~380 MB on disk).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

TINY_CACHE = Path(os.environ.get("ANYDRESSING_TINY_MODELS", Path.home() / ".cache/anydressing/tiny-models"))

# model kind -> ComfyUI model folder key that the matching loader node lists.
FOLDER_KEYS = {"checkpoint": "checkpoints", "controlnet": "controlnet", "lora": "loras"}


@pytest.fixture(scope="session")
def tiny_models(host) -> dict:
    """``{"checkpoint", "controlnet", "lora", "folder"}`` -> Path of the tiny random models (noise weights)."""
    from devtools import tiny_models

    return tiny_models.ensure_tiny_models(TINY_CACHE)


@pytest.fixture(scope="session")
def tiny_model_names(host, tiny_models) -> dict:
    """Registers the tiny models' folder with the host (checkpoints, controlnet, loras) and returns
    ``{"checkpoint": name, "controlnet": name, "lora": name}``: the values loader nodes take."""
    fp = host.folder_paths
    for key in FOLDER_KEYS.values():
        fp.add_model_folder_path(key, str(tiny_models["folder"]))
    names = {kind: tiny_models[kind].name for kind in FOLDER_KEYS}
    for kind, key in FOLDER_KEYS.items():
        listed = fp.get_filename_list(key)
        assert names[kind] in listed, f"{names[kind]} not listed in ComfyUI's {key!r} folder: {listed}"
    return names


@pytest.fixture(scope="session")
def tiny_sdxl(host) -> dict:
    """``{"checkpoint", "controlnet", "lora", "folder"}`` -> Path of the tiny SDXL-family files (noise weights; built
    once per machine, about 1.3 GB and 40 s)."""
    tiny = importlib.import_module("devtools.tiny_models")
    return tiny.ensure_tiny_sdxl_models(TINY_CACHE)


@pytest.fixture(scope="session")
def tiny_sdxl_names(host, tiny_sdxl) -> dict:
    """Registers the tiny SDXL folder with the host and returns the names its loader nodes take."""
    fp = host.folder_paths
    for key in FOLDER_KEYS.values():
        fp.add_model_folder_path(key, str(tiny_sdxl["folder"]))
    return {kind: tiny_sdxl[kind].name for kind in FOLDER_KEYS}


@pytest.fixture(scope="session")
def sdxl_checkpoint(host, tiny_sdxl_names) -> tuple:
    """``(MODEL, CLIP, VAE)`` of the tiny SDXL checkpoint through the stock CheckpointLoaderSimple, loaded once
    per session (about 8 s)."""
    return host.run("CheckpointLoaderSimple", ckpt_name=tiny_sdxl_names["checkpoint"])
