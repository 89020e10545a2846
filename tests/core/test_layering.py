"""The core never imports ComfyUI (STYLE 1): checked on the source and on a real import."""

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "anydressing_core"
FORBIDDEN = {"comfy", "folder_paths", "nodes", "server", "comfy_api", "comfy_extras", "execution"}


def imported_roots(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def test_core_sources_do_not_import_comfyui():
    files = sorted(CORE.rglob("*.py"))
    assert files, "no core sources found"
    bad = [f"{f.relative_to(CORE.parent)}:{line} imports {mod}" for f in files
           for mod, line in imported_roots(f) if mod in FORBIDDEN]
    assert not bad, "core must not import ComfyUI:\n" + "\n".join(bad)


def test_importing_every_core_module_loads_no_comfyui():
    code = (
        "import importlib, pkgutil, sys\n"
        "import anydressing_core\n"
        "for m in pkgutil.walk_packages(anydressing_core.__path__, 'anydressing_core.'):\n"
        "    if not m.name.rsplit('.', 1)[-1].startswith('__'):\n"
        "        importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", f"importing the core pulled in ComfyUI modules: {res.stdout}"
