"""End-to-end fixtures: one real headless ComfyUI (``main.py --cpu``) per test session, with this pack loaded
through an extra_model_paths ``custom_nodes`` entry, an isolated ``--base-directory`` (which also holds its
temp, user and database), the tiny random models in its model folders and the shipped sample pictures
uploaded through ``/upload/image`` as workflows/README.md tells users to.

The server's log is copied to ``artifacts/e2e/comfyui.log`` at the end (artifacts/ is gitignored).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anydressing_run.client import ComfyClient
from anydressing_run.samples import shipped_samples, upload_samples
from anydressing_run.server import PACK_DIR, ComfyServer, find_comfyui
from e2e_support import ARTIFACTS, OUR_NODES, tiny_cache


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    return find_comfyui()


@pytest.fixture(scope="session")
def tiny_files(comfyui_path) -> dict:
    """The tiny checkpoint / ControlNet / LoRA, built by devtools/tiny_models.py in a subprocess (shared cache)."""
    proc = subprocess.run([sys.executable, "-m", "devtools.tiny_models", str(tiny_cache()),
                           "--comfyui", str(comfyui_path)], capture_output=True, text=True, cwd=PACK_DIR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="session")
def server_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("comfy-base")


@pytest.fixture(scope="session")
def e2e_server(comfyui_path, tiny_files, server_base):
    folder = [tiny_files["folder"]]
    srv = ComfyServer(comfyui_path, cpu=True, base_directory=server_base,
                      model_folders={"checkpoints": folder, "controlnet": folder, "loras": folder})
    srv.start()
    try:
        missing = [n for n in OUR_NODES if n not in ComfyClient(srv.url).object_info()]
        assert not missing, f"the pack did not load into the server ({missing} missing):\n{srv.log_tail(60)}"
        yield srv
    finally:
        srv.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy(srv.log_path, ARTIFACTS / "comfyui.log")
        except OSError:
            pass
        srv.cleanup()


@pytest.fixture(scope="session")
def client(e2e_server) -> ComfyClient:
    return ComfyClient(e2e_server.url)


@pytest.fixture(scope="session")
def object_info(client) -> dict:
    return client.object_info()


@pytest.fixture(scope="session")
def samples(client) -> dict:
    """The shipped sample pictures, uploaded under the names the shipped workflows use: ``{key: local Path}``."""
    upload_samples(client)
    return shipped_samples()
