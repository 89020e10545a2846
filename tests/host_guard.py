"""Pytest plugin: the test session must leave the host ComfyUI folder exactly as it found it.

At session start it records every file under the host (name, size, modification time) and every folder; the
test ``tests/test_host_untouched.py`` (always moved to the end of the run) compares the tree then and fails
with the list of added, removed and changed paths. Python's own byte-code caches (``__pycache__``) are not
compared: importing ComfyUI writes them, the same as running ComfyUI does.
Enable with ``pytest_plugins = ["host_guard"]`` in tests/conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IGNORED_DIRS = {"__pycache__"}
GUARD_TEST = "test_host_untouched.py"


def snapshot(root) -> dict:
    """``{relative path: (size, mtime_ns)}`` for files and ``{relative path + "/": None}`` for folders."""
    root = Path(root)
    tree = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        rel = Path(folder).relative_to(root)
        for d in dirs:
            tree[(rel / d).as_posix() + "/"] = None
        for f in files:
            path = Path(folder) / f
            try:
                st = path.lstat()
            except OSError:
                continue
            tree[(rel / f).as_posix()] = (st.st_size, st.st_mtime_ns)
    return tree


def compare(before: dict, after: dict) -> dict:
    """``{"added": [...], "removed": [...], "changed": [...]}`` of relative paths, each sorted."""
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p])}


def describe(changes: dict, after: dict) -> str:
    lines = []
    for kind in ("added", "removed", "changed"):
        for path in changes[kind]:
            size = after.get(path)
            lines.append(f"  {kind}: {path}" + (f" ({size[0]} bytes)" if size and kind != "removed" else ""))
    return "\n".join(lines)


def _host_path():
    """The host the session uses, by the runner's rule ($COMFYUI_PATH, else ~/ComfyUI, ...), or None."""
    from anydressing_run.errors import RunnerError
    from anydressing_run.server import find_comfyui

    try:
        return find_comfyui()
    except RunnerError:
        return None


def pytest_sessionstart(session):
    host = _host_path()
    session.config._anydressing_host_before = (host, snapshot(host) if host else None)


def pytest_collection_modifyitems(config, items):
    """Run the comparison after everything else, whatever order the rest was collected in."""
    guard = [item for item in items if Path(str(item.fspath)).name == GUARD_TEST]
    items[:] = [item for item in items if item not in guard] + guard


@pytest.fixture
def host_tree_at_start(request):
    """``(host path, snapshot taken when the session started)``; skips without a host."""
    host, before = request.config._anydressing_host_before
    if host is None:
        pytest.skip("no host ComfyUI found: nothing to guard")
    return host, before
