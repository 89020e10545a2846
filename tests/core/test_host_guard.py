"""The host-tree comparison used by tests/test_host_untouched.py sees every kind of change."""

from __future__ import annotations

import os

from host_guard import compare, snapshot


def test_added_removed_changed_and_touched_files_are_seen_but_not_byte_code(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "keep.txt").write_text("a")
    (tmp_path / "gone.txt").write_text("b")
    (tmp_path / "edit.txt").write_text("c")
    (tmp_path / "touch.txt").write_text("d")
    before = snapshot(tmp_path)
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "edit.txt").write_text("cc")
    st = (tmp_path / "touch.txt").stat()
    os.utime(tmp_path / "touch.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    (tmp_path / "user" / "comfyui.db").write_bytes(b"")
    (tmp_path / "temp").mkdir()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    changes = compare(before, snapshot(tmp_path))
    assert changes == {"added": ["temp/", "user/comfyui.db"], "removed": ["gone.txt"],
                       "changed": ["edit.txt", "touch.txt"]}
