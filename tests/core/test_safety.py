"""Safety without the host: no code from files, safetensors by default, no network code, escaped web text, and
a trainer killed while writing a checkpoint loses nothing.

1. An AST scan of every Python file of the pack (everything tracked outside tests/) forbids ``eval``/``exec``/
   ``compile``/``__import__``, the pickle family, ``torch.load`` without ``weights_only=True``,
   ``numpy.load(allow_pickle=True)``, unsafe YAML, ``os.system`` and ``shell=True``; ``from_pretrained``
   must be offline; ``torch.save`` only where its output is read back with ``weights_only=True``;
   network modules only in the headless runner (a client of a local server).
2. Behaviour: a pickle whose unpickling would create a marker directory is handed to every reader that
   accepts a pickle or a file name (converter, checkpoint reader, trainer resume, DISTS and aesthetic weight
   readers): each refuses it and the marker never appears.
3. Web: any JavaScript under web/ shows text through ``textContent``, never ``innerHTML`` and friends; the
   node help pages carry no script or event-handler HTML.
4. A trainer killed (SIGKILL) at each step of writing a checkpoint leaves the previous checkpoint complete,
   found by ``latest_checkpoint`` and loadable.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anydressing_core.errors import AnyDressingError

REPO = Path(__file__).resolve().parents[2]


def pack_sources():
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(REPO / p for p in out if not p.startswith("tests/") and (REPO / p).is_file())


# ---------------------------------------------------------------- 1. AST scan

BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
NETWORK_MODULES = {"socket", "urllib.request", "http.client", "requests", "httpx", "aiohttp", "websocket",
                   "websockets", "huggingface_hub", "ftplib", "smtplib"}
#: Files allowed to talk to the network: the headless runner is a client of the ComfyUI it starts on 127.0.0.1.
NETWORK_ALLOWED = ("anydressing_run/",)
#: torch.save is allowed only where the file is read back by the pack itself with weights_only=True.
TORCH_SAVE_ALLOWED = {"anydressing_core/train/state.py": "optimizer/scheduler/RNG state, read back with weights_only=True"}
#: from_pretrained without local_files_only=True is allowed only after the path was checked to be a local folder.
FROM_PRETRAINED_ALLOWED = {"anydressing_core/train/components.py": "checks base/unet, vae, ... are local folders first"}
#: pickle may be imported only to VET a pickle with an allowlisting Unpickler subclass; pickle.load/loads and a
#: plain pickle.Unpickler(...) stay forbidden everywhere (checked below).
PICKLE_IMPORT_ALLOWED = {"anydressing_core/train/fsdp.py": "vets DCP's .metadata with an allowlist before DCP reads it"}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan(path: Path, rel: str) -> list:
    """Every forbidden construct in one file, as ``"rel:line: what"``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def bad(node, what):
        found.append(f"{rel}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES and rel not in PICKLE_IMPORT_ALLOWED:
                    bad(node, f"imports {name} (pickles run code; read weights with safetensors)")
                if any(name == m or name.startswith(m + ".") for m in NETWORK_MODULES) and not rel.startswith(NETWORK_ALLOWED):
                    bad(node, f"imports network module {name}")
            if isinstance(node, ast.ImportFrom) and node.module == "urllib" and not rel.startswith(NETWORK_ALLOWED):
                if any(a.name == "request" for a in node.names):
                    bad(node, "imports urllib.request")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in BANNED_BUILTINS:
            bad(node, f"calls {node.func.id}()")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads"):
            bad(node, f"{name} (pickles run code)")
        if name in ("torch.load",) or name.endswith(".torch.load"):
            if not _is_true(_kw(node, "weights_only")):
                bad(node, "torch.load without weights_only=True")
        if name in ("torch.save",) and rel not in TORCH_SAVE_ALLOWED:
            bad(node, "torch.save (write weights with safetensors)")
        if name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
            bad(node, "numpy.load(allow_pickle=True)")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _dotted(_kw(node, "Loader")) if _kw(node, "Loader") is not None else (
                _dotted(node.args[1]) if len(node.args) > 1 else "")
            if not loader.endswith(("SafeLoader", "CSafeLoader")):
                bad(node, f"{name} without a safe Loader")
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            bad(node, name)
        if name == "os.system" or name == "os.popen":
            bad(node, name)
        if _is_true(_kw(node, "shell")):
            bad(node, f"{name}(shell=True)")
        if name.endswith(".from_pretrained") and rel not in FROM_PRETRAINED_ALLOWED:
            if not _is_true(_kw(node, "local_files_only")):
                bad(node, f"{name} without local_files_only=True (could download)")
    return found


def test_pack_source_has_no_code_execution_pickles_or_network():
    files = pack_sources()
    assert len(files) > 30, f"only {len(files)} files found: is the scan looking at the pack?"
    found = []
    for path in files:
        found += scan(path, path.relative_to(REPO).as_posix())
    assert not found, "forbidden constructs:\n" + "\n".join(found)


@pytest.mark.parametrize("source,expected", [
    ("eval(open('f').read())", "calls eval()"),
    ("exec(text)", "calls exec()"),
    ("import pickle\npickle.load(f)", "imports pickle"),
    ("import pickle\npickle.loads(b)", "pickle.loads (pickles run code)"),
    ("import pickle\npickle.Unpickler(f).load()", "pickle.Unpickler (pickles run code)"),
    ("import torch\ntorch.load('x.pt')", "torch.load without weights_only=True"),
    ("import torch\ntorch.load('x.pt', weights_only=False)", "torch.load without weights_only=True"),
    ("import numpy as np\nnp.load('x.npy', allow_pickle=True)", "allow_pickle"),
    ("import yaml\nyaml.load(text)", "without a safe Loader"),
    ("import requests", "network module requests"),
    ("from urllib import request", "urllib.request"),
    ("import subprocess\nsubprocess.run('ls', shell=True)", "shell=True"),
    ("from diffusers import UNet2DConditionModel as U\nU.from_pretrained('runwayml/sd')", "local_files_only"),
])
def test_the_scan_catches_what_it_forbids(tmp_path, source, expected):
    """The scan is only worth something if it fires: each forbidden construct in a throwaway file."""
    f = tmp_path / "bad.py"
    f.write_text(source)
    found = scan(f, "anydressing_core/bad.py")
    assert any(expected in x for x in found), found


def test_the_pickle_vetting_file_may_import_pickle_but_never_load_with_it(tmp_path):
    rel = next(iter(PICKLE_IMPORT_ALLOWED))
    f = tmp_path / "vet.py"
    f.write_text("import pickle\nclass R(pickle.Unpickler):\n    pass\nR(f).load()\n")
    assert scan(f, rel) == []
    f.write_text("import pickle\npickle.load(f)\n")
    assert any("pickle.load (pickles run code)" in x for x in scan(f, rel))


def test_the_scan_lets_safe_forms_through(tmp_path):
    f = tmp_path / "ok.py"
    f.write_text(textwrap.dedent("""
        import re, torch, yaml
        model.eval()
        re.compile("x")
        torch.load("x.pt", map_location="cpu", weights_only=True)
        yaml.safe_load(text)
        yaml.load(text, Loader=yaml.SafeLoader)
        CLIPModel.from_pretrained(path, local_files_only=True)
    """))
    assert scan(f, "anydressing_core/ok.py") == []


def test_loader_node_lists_safetensors_only():
    """Safetensors by default: the models/anydressing folder lists .safetensors/.sft, never pickles."""
    tree = ast.parse((REPO / "nodes" / "loader.py").read_text())
    exts = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and any(_dotted(t) == "EXTENSIONS" for t in n.targets)]
    assert exts, "nodes/loader.py has no EXTENSIONS"
    values = {c.value for c in ast.walk(exts[0].value) if isinstance(c, ast.Constant)}
    assert values and values <= {".safetensors", ".sft"}, values


# ---------------------------------------------------------------- 2. pickles that would run code

class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def evil(tmp_path):
    """``{"zip": torch.save file, "legacy": raw pickle}`` whose unpickling creates ``marker``."""
    marker = tmp_path / "PWNED"
    zipped, legacy = tmp_path / "evil.pt", tmp_path / "evil_legacy.pth"
    torch.save({"weight": torch.zeros(2, 2), "x": Evil(marker)}, str(zipped))
    legacy.write_bytes(pickle.dumps({"weight": torch.zeros(2, 2), "x": Evil(marker)}))
    return {"zip": zipped, "legacy": legacy, "marker": marker}


def test_the_evil_pickle_really_runs_code_when_loaded_unsafely(evil):
    """Control: without weights_only the file does run its code (so the tests below mean something)."""
    torch.load(str(evil["zip"]), weights_only=False)
    assert evil["marker"].is_dir()


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_converter_refuses_code_in_pickles(evil, kind, tmp_path, capsys):
    from anydressing_core import convert

    with pytest.raises(AnyDressingError, match="weights-only"):
        convert.read_any(str(evil[kind]))
    assert convert.main([str(evil[kind]), "-o", str(tmp_path / "out.safetensors")]) != 0
    assert not evil["marker"].exists() and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_checkpoint_reader_refuses_a_pickle_named_safetensors(evil, kind, tmp_path):
    from anydressing_core.checkpoint import load_checkpoint

    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(evil[kind].read_bytes())
    with pytest.raises(AnyDressingError, match="pickled torch file"):
        load_checkpoint(str(renamed))
    assert not evil["marker"].exists()


def test_trainer_resume_refuses_code_in_its_pickles(evil, tmp_path):
    from anydressing_core.train import state

    tmp = state.begin(tmp_path / "run", 3, True)
    state.write_rank(tmp, 0, {"torch": torch.get_rng_state()})
    state.write_main(tmp, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {"last_epoch": 3},
                     {"step": 3, "world_size": 1})
    final = state.commit(tmp, keep=2)
    (final / "optimizer.pt").write_bytes(evil["zip"].read_bytes())  # a tampered checkpoint
    with pytest.raises(Exception) as info:
        state.load(final, 0)
    assert "weights_only" in str(info.value) or "Unpickl" in type(info.value).__name__ + str(info.value)
    assert not evil["marker"].exists()


def test_weight_readers_for_metrics_and_losses_refuse_code(evil, tmp_path):
    from anydressing_core.losses import load_dists

    with pytest.raises(Exception):
        load_dists(str(evil["zip"]))
    aesthetic = pytest.importorskip("anydressing_core.metrics.aesthetic")
    with pytest.raises(Exception):
        aesthetic.convert_pickle(str(evil["legacy"]), str(tmp_path / "a.safetensors"))
    assert not evil["marker"].exists()


# ---------------------------------------------------------------- 3. web extension

UNSAFE_JS = re.compile(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML\s*\(|document\.write\s*\(|\beval\s*\(|"
                       r"new\s+Function\s*\(|\.html\s*\(")
UNSAFE_HTML = re.compile(r"<\s*(script|iframe|object|embed)\b|\son[a-z]+\s*=|javascript:", re.I)


def test_web_extension_escapes_what_it_displays():
    web = REPO / "web"
    scripts = [p for p in web.rglob("*") if p.suffix in (".js", ".mjs", ".ts")] if web.is_dir() else []
    bad = []
    for p in scripts:
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if UNSAFE_JS.search(line):
                bad.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    assert not bad, "web code builds HTML from strings (use textContent / createElement):\n" + "\n".join(bad)
    pages = list((web / "docs").rglob("*.md")) if (web / "docs").is_dir() else []
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert not UNSAFE_HTML.search(text), f"{p.relative_to(REPO)} carries active HTML"


def test_the_web_checks_fire():
    assert UNSAFE_JS.search("el.innerHTML = name") and UNSAFE_JS.search("div.insertAdjacentHTML('beforeend', s)")
    assert not UNSAFE_JS.search("el.textContent = name")
    assert UNSAFE_HTML.search("<img src=x onerror=alert(1)>") and UNSAFE_HTML.search("<script>")


# ---------------------------------------------------------------- 4. a trainer killed while writing a checkpoint

CHILD = textwrap.dedent(r'''
    import os, shutil, signal, sys
    from pathlib import Path
    import torch
    from anydressing_core.train import state as st

    out, point = Path(sys.argv[1]), sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def truncate(path):
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    def save(step, value, keep):
        tmp = st.begin(out, step, True)
        st.write_rank(tmp, 0, {"torch": torch.manual_seed(step).get_state()})
        st.write_main(tmp, {"w": torch.full((128, 128), float(value))}, {"state": {}, "param_groups": []},
                      {"last_epoch": step}, {"step": step, "world_size": 1})
        return st.commit(tmp, keep)

    keep = 1 if point == "prune" else 3
    save(1, 1.0, keep)
    if point == "overwrite":
        save(2, 2.0, keep)
    if point == "model":
        real = st.save_file
        def save_file(tensors, path, metadata=None):
            real(tensors, path, metadata=metadata); truncate(path); die()
        st.save_file = save_file
    elif point == "optimizer":
        real_save, calls = torch.save, [0]
        def torch_save(obj, f, *a, **k):
            calls[0] += 1
            real_save(obj, f, *a, **k)
            if calls[0] == 2:  # write_rank's RNG first, then the optimizer
                truncate(f); die()
        torch.save = torch_save
    elif point == "state":
        real_write = Path.write_text
        def write_text(self, text, *a, **k):
            real_write(self, text[: len(text) // 2], *a, **k); die()
        Path.write_text = write_text
    elif point == "rename":
        real_replace = st.os.replace
        def replace(src, dst):
            if Path(src).is_dir():
                die()
            real_replace(src, dst)
        st.os.replace = replace
    elif point in ("prune", "overwrite"):
        def rmtree(path, *a, **k):
            (Path(path) / "model.safetensors").unlink()  # part of the folder is gone, then the power goes
            die()
        st.shutil.rmtree = rmtree
    save(2, 3.0 if point == "overwrite" else 2.0, keep)
    print("NOT KILLED")
''')


def _kill_run(tmp_path, point):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), point], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != -signal.SIGKILL:  # pytest.fail: a harness failure, not the property
        pytest.fail(f"the child was not killed as planned: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}")
    return out


@pytest.mark.parametrize("point", ["model", "optimizer", "state", "rename"])
def test_killed_while_writing_keeps_the_previous_checkpoint(tmp_path, point):
    from anydressing_core.train import state

    out = _kill_run(tmp_path, point)
    latest = state.latest_checkpoint(out)
    assert latest is not None and latest.name == "step_00000001", latest
    data = state.load(latest, 0)
    assert data["state"]["step"] == 1 and torch.equal(data["model"]["w"], torch.full((128, 128), 1.0))
    assert not (out / "checkpoints" / "step_00000002").exists(), "a half checkpoint carries a final name"


def test_killed_while_pruning_keeps_the_new_checkpoint(tmp_path):
    from anydressing_core.train import state

    out = _kill_run(tmp_path, "prune")
    latest = state.latest_checkpoint(out)
    assert latest.name == "step_00000002"
    assert torch.equal(state.load(latest, 0)["model"]["w"], torch.full((128, 128), 2.0))


def test_killed_while_overwriting_the_same_step_keeps_a_loadable_checkpoint(tmp_path):
    """Re-saving a step that exists (a resume from an older checkpoint reaching it again), killed while the old
    folder is being removed: a loadable checkpoint must remain. Failed before 3e144fb (commit() removed the old
    folder before renaming the new one in)."""
    from anydressing_core.train import state

    out = _kill_run(tmp_path, "overwrite")
    latest = state.latest_checkpoint(out)
    assert latest is not None
    state.load(latest, 0)  # must not fail on a missing model.safetensors
    assert (latest / "model.safetensors").is_file()


REAL_TRAINER = textwrap.dedent(r'''
    import os, signal, sys
    from pathlib import Path
    from anydressing_core.train import state as st
    from anydressing_core.train.__main__ import main
    from anydressing_core.train.tiny import tiny_overrides

    real, calls = st.save_file, [0]
    def save_file(tensors, path, metadata=None):
        calls[0] += 1
        real(tensors, path, metadata=metadata)
        if calls[0] == 2:  # the second checkpoint's model.safetensors: half written, then SIGKILL
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    st.save_file = save_file
    out, model, manifest = sys.argv[1:4]
    main(["train"] + tiny_overrides(out, model, manifest)
         + ["run.max_steps=3", "run.checkpoint_every=1", "run.keep_checkpoints=2"])
    print("NOT KILLED")
''')


@pytest.mark.slow  # a real (tiny) training run in a subprocess: ~10 s idle, ~30 s on a loaded machine
def test_real_trainer_killed_while_checkpointing_resumes_from_the_previous_one(tmp_path):
    pytest.importorskip("accelerate")
    from anydressing_core.train import state
    from anydressing_core.train.tiny import write_dataset, write_model

    model, manifest = write_model(tmp_path / "model"), write_dataset(tmp_path / "data", count=4)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", REAL_TRAINER, str(out), str(model), str(manifest)], cwd=str(REPO),
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    latest = state.latest_checkpoint(out)
    assert latest is not None and latest.name == "step_00000001", latest
    data = state.load(latest, 0)
    assert data["state"]["step"] == 1 and data["model"], "the previous checkpoint is not complete"
    assert not (out / "checkpoints" / "step_00000002").exists()
