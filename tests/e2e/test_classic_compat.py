"""Graphs made for the classic (pre-V3) nodes give the same picture, bit for bit, on the V3 nodes.

The classic pack is taken from the repository's own history (``CLASSIC_COMMIT``, the last commit whose nodes
used the classic ``INPUT_TYPES`` API) with ``git archive``, and loaded into a second headless server beside
the current pack.  Every runnable shipped API workflow runs on both servers with the same tiny models, inputs
and seed, and the result pictures must be identical.  (The attention-map picture is not compared: its
rendering was redesigned on purpose.)
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from anydressing_run.client import ComfyClient
from anydressing_run.run import run_workflow
from anydressing_run.samples import upload_samples
from anydressing_run.server import PACK_DIR, ComfyServer
from e2e_support import OUR_NODES, RUNNABLE, load_api, quick_substitutions

pytestmark = pytest.mark.slow

#: The last commit with the classic node API (before the V3 rewrite).
CLASSIC_COMMIT = "e5a5161"


def classic_pack(target):
    """Extract the classic pack from git into ``target``; skip loudly when the history is not there."""
    if shutil.which("git") is None or not (PACK_DIR / ".git").exists():
        pytest.skip("CLASSIC COMPAT SKIPPED: not a git checkout, so the classic nodes cannot be rebuilt from history")
    probe = subprocess.run(["git", "-C", str(PACK_DIR), "cat-file", "-e", f"{CLASSIC_COMMIT}^{{commit}}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"CLASSIC COMPAT SKIPPED: commit {CLASSIC_COMMIT} is not in this clone (shallow?)")
    target.mkdir(parents=True)
    archive = target.parent / "classic.tar"
    subprocess.run(["git", "-C", str(PACK_DIR), "archive", "-o", str(archive), CLASSIC_COMMIT], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture(scope="module")
def servers(comfyui_path, tiny_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("classic")
    classic_nodes = root / "classic_custom_nodes"
    classic_pack(classic_nodes / "ComfyUI-AnyDressing-classic")
    folder = [tiny_files["folder"]]
    models = {"checkpoints": folder, "controlnet": folder, "loras": folder}
    started = []
    try:
        for name, extra, load_pack in (("v3", {}, True), ("classic", {"custom_nodes": [classic_nodes]}, False)):
            srv = ComfyServer(comfyui_path, cpu=True, base_directory=root / f"base-{name}",
                              model_folders={**models, **extra}, load_pack=load_pack)
            srv.start()
            started.append(srv)
            upload_samples(ComfyClient(srv.url))  # the pictures the shipped workflows name
            info = ComfyClient(srv.url).object_info()
            missing = [n for n in OUR_NODES if n not in info]
            assert not missing, f"{name} pack did not load ({missing} missing):\n{srv.log_tail(60)}"
        yield {"v3": started[0], "classic": started[1]}
    finally:
        for srv in started:
            srv.cleanup()


def pixels(path):
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"{path} is not a picture"
    return img


@pytest.mark.parametrize("name", RUNNABLE)
def test_shipped_workflow_gives_the_classic_picture(name, servers, tiny_files, tmp_path):
    graph = load_api(name)
    results = {}
    for which, srv in servers.items():
        out = tmp_path / which
        written = run_workflow(graph, ComfyClient(srv.url), quick_substitutions(tiny_files), out, stem=name,
                               progress=False)
        result = [p for p in written if "result" in p.name]
        assert len(result) == 1, written
        results[which] = pixels(result[0])
    assert results["v3"].shape == results["classic"].shape
    assert np.array_equal(results["v3"], results["classic"]), (
        f"{name}: the V3 nodes give another picture than the classic ones (max difference "
        f"{int(np.abs(results['v3'].astype(int) - results['classic'].astype(int)).max())})")
