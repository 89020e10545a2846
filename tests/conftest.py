"""Shared test fixtures: finding the host ComfyUI and loading this pack into it in-process.

Tiers: ``tests/core`` needs only PyTorch; ``tests/nodes`` and ``tests/e2e`` need the host.
The host is found via ``COMFYUI_PATH``, else ``~/ComfyUI``, else the ComfyUI that contains this pack
(``custom_nodes/<pack>``).  Without it, host tests skip with a loud reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.comfy_host import InProcessHost

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
    "HOST TIER SKIPPED: no ComfyUI found (set COMFYUI_PATH, or put a ComfyUI checkout at ~/ComfyUI); "
    "the nodes are NOT tested inside ComfyUI"
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


_HOST_SINGLETON: InProcessHost | None = None


@pytest.fixture(scope="session")
def host() -> InProcessHost:
    global _HOST_SINGLETON
    if HOST is None:
        pytest.skip(HOST_REASON)
    if _HOST_SINGLETON is None:
        _HOST_SINGLETON = InProcessHost(HOST)
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
