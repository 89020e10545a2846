"""The whole test session left the host ComfyUI folder as it found it (see tests/host_guard.py).

Runs last. A run of part of the suite checks what that part did.
"""

from __future__ import annotations

from host_guard import compare, describe, snapshot


def test_the_session_wrote_nothing_into_the_host_comfyui(host_tree_at_start):
    host, before = host_tree_at_start
    after = snapshot(host)
    changes = compare(before, after)
    assert not any(changes.values()), f"the tests changed the host ComfyUI at {host}:\n{describe(changes, after)}"
