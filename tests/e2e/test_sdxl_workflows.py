"""The shipped SDXL workflows run through the headless runner on a real ComfyUI with the tiny SDXL checkpoint
(a 1.2 GB file built once per machine; 64x64, 2 steps): slow tier, one server for this module."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from anydressing_run.client import ComfyClient
from anydressing_run.run import run_workflow
from anydressing_run.samples import upload_samples
from anydressing_run.server import PACK_DIR, ComfyServer
from anydressing_run.workflow_specs import SDXL_WORKFLOWS

from e2e_support import load_api, quick_substitutions, tiny_cache

pytestmark = pytest.mark.slow


def png_size(path) -> tuple:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def sdxl_files(comfyui_path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "devtools.tiny_models", str(tiny_cache()), "--comfyui",
                           str(comfyui_path), "--family", "sdxl"], capture_output=True, text=True, cwd=PACK_DIR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def sdxl_client(comfyui_path, sdxl_files, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-sdxl")
    folder = [sdxl_files["folder"]]
    srv = ComfyServer(comfyui_path, cpu=True, base_directory=base,
                      model_folders={"checkpoints": folder, "controlnet": folder, "loras": folder})
    srv.start()
    try:
        client = ComfyClient(srv.url)
        upload_samples(client)  # the shipped sample pictures, under the names the workflows use
        yield client
    finally:
        srv.stop()
        srv.cleanup()


def test_sdxl_workflows_ship_sdxl_sizes_clip_and_budget():
    for name in SDXL_WORKFLOWS:
        graph = load_api(name)
        by_type = {}
        for node in graph.values():
            by_type.setdefault(node["class_type"], []).append(node["inputs"])
        (latent,) = by_type["EmptyLatentImage"]
        assert (latent["width"], latent["height"]) == (832, 1216), name
        (encode,) = by_type["AnyDressingEncodeGarments"]
        (ckpt_id,) = [k for k, v in graph.items() if v["class_type"] == "CheckpointLoaderSimple"]
        assert (encode["width"], encode["height"]) == (768, 1024) and encode["clip"] == [ckpt_id, 1], name
        (apply,) = by_type["AnyDressingApply"]
        assert apply["garment_token_budget"] == 4096 and apply["strength"] == 0.7, name
        (sampler,) = by_type["KSampler"]
        assert (sampler["cfg"], sampler["steps"], sampler["sampler_name"]) == (6.0, 30, "ddim"), name


@pytest.mark.parametrize("name", sorted(SDXL_WORKFLOWS))
def test_sdxl_workflow_runs_on_the_tiny_sdxl_checkpoint(name, sdxl_client, sdxl_files, tmp_path):
    graph = load_api(name)
    written = run_workflow(graph, sdxl_client, quick_substitutions(sdxl_files), tmp_path, stem=name, progress=False)
    assert sorted(p.name for p in written) == [f"{name}_attention_maps_00.png", f"{name}_result_00.png"]
    assert png_size(tmp_path / f"{name}_result_00.png") == (64, 64)
    maps_w, maps_h = png_size(tmp_path / f"{name}_attention_maps_00.png")
    n_garments = sum(n["class_type"] == "AnyDressingGarment" for n in graph.values())
    assert maps_h >= 160 * n_garments and maps_w >= 160 * 2  # one row (thumbnail + map) per garment


def test_the_token_budget_reaches_the_server(sdxl_client, sdxl_files, tmp_path):
    """At 64x64 three garments hold 3 x 16 first-level tokens: a budget of 32 pools them, 4096 does not."""
    graph = load_api("anydressing_sdxl_upper_lower_hat")
    pictures = []
    for budget in (4096, 32):
        subs = quick_substitutions(sdxl_files, sets=[f"Apply AnyDressing.garment_token_budget={budget}"])
        out = tmp_path / str(budget)
        run_workflow(graph, sdxl_client, subs, out, stem="b", progress=False)
        pictures.append((out / "b_result_00.png").read_bytes())
    assert pictures[0] != pictures[1]
