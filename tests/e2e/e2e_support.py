"""Constants and helpers shared by the end-to-end tests (imported as ``e2e_support``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from anydressing_run.run import Substitutions
from anydressing_run.server import PACK_DIR
from anydressing_run.workflow_specs import SDXL_WORKFLOWS, THIRD_PARTY, WORKFLOWS

ARTIFACTS = PACK_DIR / "artifacts" / "e2e"
WORKFLOWS_DIR = PACK_DIR / "workflows"
OUR_NODES = ("AnyDressingGarment", "AnyDressingEncodeGarments", "AnyDressingApply", "AnyDressingAttentionMaps")
# SDXL workflows run on the tiny SDXL checkpoint in tests/e2e/test_sdxl_workflows.py (slow tier)
RUNNABLE = [name for name in WORKFLOWS if name not in THIRD_PARTY and name not in SDXL_WORKFLOWS]
# Overrides that keep every e2e run at about a second on 2 CPU cores (the shipped files keep the paper's values).
QUICK = dict(steps=2, width=64, height=64, garment_size=(64, 64), seed=1)


def tiny_cache() -> Path:
    return Path(os.environ.get("ANYDRESSING_TINY_MODELS", Path.home() / ".cache/anydressing/tiny-models"))


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / "api" / f"{name}.json").read_text())


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def quick_substitutions(tiny_files: dict, **extra) -> Substitutions:
    """Tiny models and QUICK sizes for any shipped graph (the sample pictures already sit in the input folder)."""
    return Substitutions(checkpoint=tiny_files["checkpoint"].name, lora=tiny_files["lora"].name,
                         controlnet=tiny_files["controlnet"].name, **{**QUICK, **extra})


def runner_env() -> dict:
    env = dict(os.environ, ANYDRESSING_TINY_MODELS=str(tiny_cache()))
    env.pop("ANYDRESSING_SERVER", None)
    return env


def runner_command(*args) -> list:
    return [sys.executable, "-m", "anydressing_run", *map(str, args)]


def _bare_python():
    """A Python 3.10+ on this machine without torch, to show that the runner needs only the standard library."""
    probe = "import importlib.util as u, sys; sys.exit(sys.version_info < (3, 10) or bool(u.find_spec('torch')))"
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and os.path.isfile(candidate) and subprocess.run([candidate, "-c", probe]).returncode == 0:
            return candidate
    return None


BARE_PYTHON = _bare_python()


def runner(*args, timeout=600, python=None):
    """``python -m anydressing_run ARGS`` as a user types it; returns the CompletedProcess (text)."""
    command = runner_command(*args)
    if python:
        command[0] = python
    return subprocess.run(command, cwd=PACK_DIR, capture_output=True, text=True, timeout=timeout, env=runner_env())


def quick_flags(tiny_files) -> list:
    return ["--steps", QUICK["steps"], "--width", QUICK["width"], "--height", QUICK["height"],
            "--garment-size", "64x64", "--seed", QUICK["seed"], "--checkpoint", tiny_files["checkpoint"].name]
