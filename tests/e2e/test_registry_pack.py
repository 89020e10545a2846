"""The registry archive: ``comfy node pack`` builds it, and it installs and loads in a clean ComfyUI.

The archive is built from a copy of this checkout's git-tracked files (as they are in the working tree),
with build and test outputs planted beside them, so what must stay out is really there to leave out. It
is then unpacked the way the registry installs a pack (``custom_nodes/<node id>/``) into a copy of the
host ComfyUI's code that has no models, user data or other custom nodes, and that server is started
headless on the CPU. comfy-cli is a test tool (scripts/setup_env.sh); without it these tests skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from anydressing_run.client import ComfyClient
from anydressing_run.server import PACK_DIR, ComfyServer
from e2e_support import WORKFLOWS_DIR

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

pytestmark = pytest.mark.slow

NODE_IDS = ("AnyDressingGarment", "AnyDressingEncodeGarments", "AnyDressingApply", "AnyDressingAttentionMaps",
            "AnyDressingLoader")
# What the pack needs at run time, and what a user reads first.
REQUIRED_FILES = ("__init__.py", "requirements.txt", "pyproject.toml", "README.md", "LICENSE",
                  "nodes/__init__.py", "anydressing_core/__init__.py", "anydressing_run/__init__.py",
                  *(f"web/docs/{node_id}.md" for node_id in NODE_IDS))
REQUIRED_FOLDERS = ("nodes/", "anydressing_core/", "workflows/", "workflows/api/", "web/docs/")
# Outputs a developer's checkout holds beside the code (none of it is git-tracked): never in the archive.
PLANTED = (".venv/bin/python", ".venv/lib/site.py", "artifacts/e2e/comfyui.log", "outputs/demo/person.png",
           "anydressing_core/__pycache__/attention.cpython-311.pyc", ".pytest_cache/README.md",
           ".hypothesis/examples/1", "models/anydressing/garments.safetensors", "local_weights.ckpt",
           "anydressing.egg-info/PKG-INFO", ".ruff_cache/CACHEDIR.TAG")
# The host's folders that hold models, user data, outputs and other packs: a clean copy starts without them.
HOST_DATA = {"models", "output", "input", "temp", "user", "custom_nodes", ".git"}


def quiet_env() -> dict:
    """The environment for comfy-cli and git: no telemetry, and no GIT_* variable pointing at another repo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return dict(env, DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1")


def tracked_files() -> list[str]:
    """The checkout's git-tracked files that exist in its working tree (paths relative to the repo)."""
    result = subprocess.run(["git", "-C", str(PACK_DIR), "ls-files", "-z"], capture_output=True, env=quiet_env())
    if result.returncode != 0:
        pytest.skip(f"the pack folder is not a git checkout, so there is no file list to pack: {result.stderr!r}")
    names = [name for name in result.stdout.decode().split("\0") if name]
    return [name for name in names if (PACK_DIR / name).is_file()]


def copy_tree(files: list[str], dest: Path, *, with_git: bool) -> Path:
    """Copy ``files`` to ``dest``, plant the outputs of PLANTED, and (``with_git``) make them a git index."""
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACK_DIR / name, dest / name)
    if with_git:
        subprocess.run(["git", "init", "-q", str(dest)], check=True, env=quiet_env())
        subprocess.run(["git", "-C", str(dest), "add", "-f", "--pathspec-from-file=-", "--pathspec-file-nul"],
                       input="\0".join(files).encode(), check=True, env=quiet_env())
    for name in PLANTED:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(b"not part of the pack\n")
    return dest


def comfy_node_pack(tree: Path) -> tuple[set, str]:
    """Run ``comfy node pack`` in ``tree``; the archive's member names and the command's output."""
    if importlib.util.find_spec("comfy_cli") is None:
        pytest.skip("comfy-cli is not installed (scripts/setup_env.sh installs it with the test tools)")
    result = subprocess.run([sys.executable, "-m", "comfy_cli", "node", "pack"], cwd=tree, env=quiet_env(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and (tree / "node.zip").is_file(), output
    with zipfile.ZipFile(tree / "node.zip") as archive:
        return set(archive.namelist()), output


def assert_holds_the_pack(names: set) -> None:
    missing = [f for f in REQUIRED_FILES if f not in names]
    missing += [d for d in REQUIRED_FOLDERS if not any(n.startswith(d) for n in names)]
    assert not missing, f"the archive lacks what the pack needs at run time: {missing}"
    workflows = {p.relative_to(PACK_DIR).as_posix() for p in WORKFLOWS_DIR.rglob("*.json")}
    assert workflows <= names, f"workflows missing from the archive: {sorted(workflows - names)}"
    leaked = sorted(n for n in names if n in PLANTED or n.endswith((".pyc", ".safetensors", ".ckpt")))
    assert not leaked, f"build, test or model files leaked into the archive: {leaked}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The archive built from a git copy of the checkout (what ``comfy node publish`` uploads)."""
    files = tracked_files()
    tree = copy_tree(files, tmp_path_factory.mktemp("pack-git") / "src", with_git=True)
    names, output = comfy_node_pack(tree)
    assert "Created zip file" in output, output
    assert names == set(files), ("the archive must be exactly the git-tracked files; extra: "
                                 f"{sorted(names - set(files))}, left out: {sorted(set(files) - names)}")
    assert_holds_the_pack(names)
    return tree / "node.zip"


def test_pack_from_a_git_checkout_holds_the_tracked_files_only(archive):
    size = archive.stat().st_size
    assert size < 5 * 2**20, f"the archive is {size / 2**20:.1f} MiB: something big is tracked"


def test_pack_without_git_leaves_out_what_comfyignore_names(tmp_path):
    """Outside git comfy-cli archives the whole folder minus .comfyignore: the outputs must still stay out."""
    tree = copy_tree(tracked_files(), tmp_path / "src", with_git=False)
    names, output = comfy_node_pack(tree)
    assert "Not in a git repository" in output, output
    assert_holds_the_pack(names)


def clean_comfyui(host: Path, dest: Path) -> Path:
    """A copy of the host's code only: no models, user data, outputs or custom nodes of its own."""
    def data_folders(folder, entries):
        skip = {"__pycache__"}
        if Path(folder) == host:
            skip |= HOST_DATA
        return [e for e in entries if e in skip]

    shutil.copytree(host, dest, ignore=data_folders, symlinks=True)
    (dest / "custom_nodes").mkdir()
    return dest


def test_archive_installs_and_loads_in_a_clean_comfyui(archive, comfyui_path, tmp_path):
    comfyui = clean_comfyui(comfyui_path, tmp_path / "ComfyUI")
    with zipfile.ZipFile(archive) as packed:
        node_id = tomllib.loads(packed.read("pyproject.toml").decode())["project"]["name"]
        packed.extractall(comfyui / "custom_nodes" / node_id)  # where the registry installs a pack

    with ComfyServer(comfyui, cpu=True, load_pack=False) as server:
        client = ComfyClient(server.url)
        info = client.object_info()
        missing = [n for n in NODE_IDS if n not in info]
        assert not missing, f"nodes missing after installing the archive: {missing}\n{server.log_tail(60)}"
        modules = {info[n]["python_module"] for n in NODE_IDS}
        assert modules == {f"custom_nodes.{node_id}"}, f"the nodes did not come from the unpacked archive: {modules}"
        help_page = client.get_bytes(f"/extensions/{node_id}/docs/AnyDressingApply.md").decode()
        assert help_page == (PACK_DIR / "web" / "docs" / "AnyDressingApply.md").read_text()
        templates = set(client.get_json("/workflow_templates").get(node_id, []))
        assert {p.stem for p in WORKFLOWS_DIR.glob("*.json")} <= templates, templates
        log = server.log_path.read_text(errors="replace").splitlines()
    # ComfyUI lists each custom node folder under "Import times", marked "(IMPORT FAILED)" when it failed
    # (its own comfy_extras that lack optional dependencies are reported apart, and are not the pack's)
    folder = str(comfyui / "custom_nodes" / node_id)
    listed = [line for line in log if line.endswith(f"seconds: {folder}")]
    failed = [line for line in log if folder in line and ("IMPORT FAILED" in line or "Cannot import" in line
                                                          or 'File "' in line)]
    assert listed and not failed, "\n".join(failed or log[-60:])
