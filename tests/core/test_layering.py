"""Layering: the core never imports ComfyUI (checked on the source and on a real import), the nodes reach the host
only through nodes/host_api.py, the runner imports no ComfyUI, no import cycles, no private host symbols and no
monkey-patching in the product."""

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


REPO = CORE.parent
NODES = REPO / "nodes"
PACKAGES = ("anydressing_core", "anydressing_run", "nodes", "devtools", "benchmarks")


def test_nodes_import_the_host_only_through_host_api():
    """One module lists every host symbol (nodes/host_api.py); the other node modules go through it."""
    bad = []
    for f in sorted(NODES.glob("*.py")):
        if f.name in ("host_api.py",):
            continue
        bad += [f"{f.relative_to(REPO)}:{line} imports {mod}" for mod, line in imported_roots(f) if mod in FORBIDDEN]
    assert not bad, "import ComfyUI symbols through nodes/host_api.py (and list them in host_contract.py):\n" + \
        "\n".join(bad)


def test_runner_imports_no_comfyui():
    """The headless runner talks to a server over HTTP; it must run from any Python."""
    files = sorted((REPO / "anydressing_run").rglob("*.py"))
    bad = [f"{f.relative_to(REPO)}:{line} imports {mod}" for f in files for mod, line in imported_roots(f)
           if mod in FORBIDDEN]
    assert not bad, "\n".join(bad)


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict:
    """``{module: {imported module, ...}}`` over the pack's packages, every import (module level or inside a
    function), relative imports resolved."""
    modules = {}
    for package in PACKAGES:
        for f in sorted((REPO / package).rglob("*.py")):
            modules[_module_name(f)] = f
    graph = {}
    for name, f in modules.items():
        is_package = f.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                found = [stem] + [f"{stem}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    # a package importing its own submodules (nodes/__init__ -> nodes.apply) is how packages work, not a cycle
    edges = {m: {t for t in targets if not (m and t.startswith(m + "."))} for m, targets in graph.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    """Control for the test above: a planted two-module cycle and a longer one are found."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


HOST_NAMES = {"model_management", "model_patcher", "patcher_extension", "sample", "samplers", "sd", "utils",
              "folder_paths", "io", "optimized_attention", "comfy", "comfy_api", "nodes", "server", "execution"}


def host_violations(source: str, filename: str = "<source>") -> list:
    """Private host symbols and monkey-patching in ``source``: ``host._x`` reads, ``from comfy.x import _y``,
    assignments to attributes of a host module (``host.attr = ...``, ``setattr(host, ...)``)."""
    out = []
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FORBIDDEN:
            out += [f"line {node.lineno}: imports private {a.name} from {node.module}"
                    for a in node.names if a.name.startswith("_")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id not in ("self", "cls"):
                out.append(f"line {node.lineno}: reads private attribute {node.attr} of {root.id}")
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            root = target
            while isinstance(root, (ast.Attribute, ast.Subscript)) and isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(target, ast.Attribute) and isinstance(root, ast.Name) and root.id in HOST_NAMES:
                out.append(f"line {node.lineno}: assigns {ast.unparse(target)} (monkey-patching the host)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            first = node.args[0]
            root = first
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in HOST_NAMES:
                out.append(f"line {node.lineno}: setattr on {ast.unparse(first)} (monkey-patching the host)")
    return out


def test_product_uses_no_private_host_symbols_and_patches_nothing():
    files = [REPO / "__init__.py"] + sorted(NODES.glob("*.py"))
    bad = [f"{f.relative_to(REPO)} {v}" for f in files for v in host_violations(f.read_text(), str(f))]
    assert not bad, "\n".join(bad)


def test_host_violations_catch_what_they_should():
    """Control: each forbidden form is found, ordinary code is not."""
    planted = ("import comfy.utils as utils\nfrom comfy.sd import _load\nutils.PROGRESS_BAR_ENABLED = False\n"
               "x = utils._private\nsetattr(utils, 'f', None)\nself._ok = 1\nmodel.model_options['a'] = 1\n")
    found = host_violations(planted)
    assert len(found) == 4, found
