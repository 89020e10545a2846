"""What the Comfy Registry checks before it takes the pack: the pyproject metadata (registry specification),
ruff's publishing rules (S102 exec, S307 eval, E702 two statements on one line) over every file, and the
icon that ``[tool.comfy] Icon`` points at. ``comfy node validate`` runs when comfy-cli is installed
(scripts/setup_env.sh installs it with the test tools). docs/RELEASING.md says how to publish.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REGISTRY_RULES = ("S102", "S307", "E702")
NO_RUFF = "ruff is not installed (scripts/setup_env.sh installs it with the test tools)"
NO_COMFY_CLI = "comfy-cli is not installed (scripts/setup_env.sh installs it with the test tools)"
# comfy-cli's own pattern for requires-comfyui (registry/config_parser.py, validate_version)
VERSION_RANGE = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


def quiet_env() -> dict:
    """The environment for comfy-cli: no telemetry, and no GIT_* variable pointing git at another repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return dict(env, DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1")


def ruff(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip(NO_RUFF)
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def requirement_lines(text: str) -> list[str]:
    return [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_registry_ruff_rules_are_clean_over_the_repo():
    result = ruff(".", "--select", ",".join(REGISTRY_RULES))
    assert result.returncode == 0, f"the registry will refuse these (fix them, never silence them):\n{result.stdout}"


def test_ruff_configuration_catches_what_the_registry_refuses(tmp_path):
    """Guards the clean run above against a configuration that checks nothing (a wrong select or exclude)."""
    bad = tmp_path / "bad_node.py"
    bad.write_text("exec('x = 1')\nvalue = eval('1 + 1')\nx = 1; y = 2\n")
    result = ruff("--config", str(REPO / "pyproject.toml"), str(bad), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert [code for code in REGISTRY_RULES if code not in result.stdout] == [], result.stdout
    assert tuple(PYPROJECT["tool"]["ruff"]["lint"]["select"]) == REGISTRY_RULES


def test_pyproject_follows_the_registry_specification():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", name), name
    assert "comfyui" not in name.lower(), "the registry asks node ids not to include 'ComfyUI'"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry wants SemVer X.Y.Z"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert project["urls"]["Repository"] == "https://github.com/anydressing/ComfyUI-AnyDressing"
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert VERSION_RANGE.match(comfy["requires-comfyui"]), comfy["requires-comfyui"]
    assert all((REPO / path).exists() for path in comfy["includes"]), comfy["includes"]


def test_pyproject_dependencies_are_requirements_txt_without_torch():
    """ComfyUI-Manager installs requirements.txt, the registry publishes pyproject's list: they must agree."""
    requirements = requirement_lines((REPO / "requirements.txt").read_text())
    assert requirements == list(PYPROJECT["project"]["dependencies"])
    names = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements]
    assert not {"torch", "torchvision", "torchaudio"} & set(names), "torch is ComfyUI's to own, never listed"


def test_icon_is_the_committed_png_the_script_draws(tmp_path):
    icon_url = PYPROJECT["tool"]["comfy"]["Icon"]
    raw_root = PYPROJECT["project"]["urls"]["Repository"].replace("https://github.com/",
                                                                  "https://raw.githubusercontent.com/")
    assert icon_url.startswith(raw_root + "/main/"), icon_url
    committed = REPO / icon_url[len(raw_root + "/main/"):]
    picture = cv2.imread(str(committed), cv2.IMREAD_UNCHANGED)
    assert picture is not None, f"{committed} is not a picture OpenCV can read"
    height, width = picture.shape[:2]
    assert width <= 800 and height <= 400, "the registry shows icons up to 800x400"

    spec = importlib.util.spec_from_file_location("make_icon", REPO / "scripts" / "make_icon.py")
    make_icon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_icon)
    redrawn = cv2.imread(str(make_icon.write_icon(tmp_path / "icon.png", width)), cv2.IMREAD_UNCHANGED)
    difference = np.abs(redrawn.astype(np.int16) - picture.astype(np.int16))
    assert difference.max() <= 2, "docs/icon.png is stale: rerun python scripts/make_icon.py"


def test_comfy_node_validate_passes_without_a_warning():
    if importlib.util.find_spec("comfy_cli") is None:
        pytest.skip(NO_COMFY_CLI)
    result = subprocess.run([sys.executable, "-m", "comfy_cli", "node", "validate"], cwd=REPO, env=quiet_env(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "warning" not in output.lower(), output
