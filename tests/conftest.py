"""Shared test fixtures: finding the host ComfyUI and loading this pack into it in-process.

Tiers (STYLE.md): ``tests/core`` needs only PyTorch; ``tests/nodes`` and ``tests/e2e`` need the host.
The host is found via ``COMFYUI_PATH``, else ``~/ComfyUI``, else the ComfyUI that contains this pack
(``custom_nodes/<pack>``).  Without it, host tests skip with a loud reason.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["model_fixtures", "host_guard"]


def find_host() -> Path | None:
    """The runner's rule (one place): $COMFYUI_PATH, else ~/ComfyUI, else the ComfyUI holding this pack."""
    from anydressing_run.errors import RunnerError
    from anydressing_run.server import find_comfyui

    try:
        return find_comfyui()
    except RunnerError:
        return None


HOST = find_host()
HOST_REASON = (
    "HOST TIER SKIPPED: no ComfyUI found (set COMFYUI_PATH or extract it to ~/ComfyUI as "
    "../shared/HOST.md says); the nodes are NOT tested inside ComfyUI"
)


def pytest_report_header(config):
    return f"anydressing host: {HOST if HOST else 'NOT FOUND - ' + HOST_REASON}"


def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    skip = pytest.mark.skip(reason=HOST_REASON)
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "nodes" in parts or "e2e" in parts:
            item.add_marker(skip)


class Host:
    """The in-process host: ComfyUI modules plus this pack loaded the way ComfyUI loads it."""

    def __init__(self, path: Path):
        self.path = path
        if str(path) not in sys.path[:1]:
            sys.path.insert(0, str(path))
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        args.cpu = True  # before anything imports comfy.model_management (HOST.md)
        import comfy.model_management  # noqa: F401
        import folder_paths
        import nodes
        from anydressing_run.sandbox import isolate_in_process

        isolate_in_process(folder_paths, args=args)  # the host's input/output/temp/user stay untouched

        self.nodes = nodes
        self.folder_paths = folder_paths
        ok = asyncio.run(nodes.load_custom_node(str(REPO)))
        if not ok:
            raise RuntimeError("the pack failed to import into ComfyUI; see the log above")
        self.pack = sys.modules[str(REPO).replace(".", "_x_")]

    def node(self, node_id: str):
        """An instance of a registered node class (ours or built-in)."""
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]()

    def run(self, node_id: str, **inputs):
        """Run a classic node's function and return its outputs tuple."""
        cls = self.nodes.NODE_CLASS_MAPPINGS[node_id]
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        return out["result"] if isinstance(out, dict) else out

    def module(self, dotted: str):
        """A submodule of the pack, e.g. ``host.module("anydressing_core.attention")``."""
        import importlib

        return importlib.import_module(f"{self.pack.__name__}.{dotted}")


_HOST_SINGLETON: Host | None = None


@pytest.fixture(scope="session")
def host() -> Host:
    global _HOST_SINGLETON
    if HOST is None:
        pytest.skip(HOST_REASON)
    if _HOST_SINGLETON is None:
        _HOST_SINGLETON = Host(HOST)
    return _HOST_SINGLETON


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly whether the host tier (tests/nodes, tests/e2e) ran, and record it for .ci/run."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in counts:
        for rep in terminalreporter.stats.get(outcome, []):
            parts = Path(str(getattr(rep, "fspath", "") or rep.nodeid.split("::")[0])).parts
            if "nodes" in parts or "e2e" in parts:
                counts[outcome] += 1
    ran = HOST is not None and counts["passed"] + counts["failed"] > 0
    status = "RAN" if ran else "SKIPPED"
    line = (f"ANYDRESSING HOST TIER: {status} - {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['skipped']} skipped (host: {HOST or 'not found'})")
    terminalreporter.write_sep("=", line, red=not ran, green=ran, bold=True)
    try:
        (REPO / ".pytest-host-tier").write_text(f"{line}\n{HOST}\n")
    except OSError:
        pass
