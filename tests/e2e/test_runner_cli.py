"""The runner's command line as users call it: ``python -m anydressing_run ...`` in a subprocess.

Bad input fails fast, with a message and a non-zero exit, and leaves no output behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

from anydressing_run.server import PACK_DIR, free_port

from e2e_support import BARE_PYTHON, quick_flags, runner
from host_guard import compare, snapshot


def test_runner_imports_no_comfy_module():
    code = ("import sys, anydressing_run.cli, anydressing_run.demo, anydressing_run.make_workflows; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('comfy', 'folder_paths', 'nodes', 'server', 'comfy_api', 'torch')]; print(bad); assert not bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACK_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_list_names_every_workflow_and_the_third_party_one():
    proc = runner("list")
    assert proc.returncode == 0
    assert "upper_lower_hat" in proc.stdout and "ComfyUI_IPAdapter_plus" in proc.stdout


def test_run_with_progress_bar_and_outputs(e2e_server, samples, tiny_files, tmp_path):
    out = tmp_path / "out"
    proc = runner("run", "upper_lower_hat", "--server", e2e_server.url, "--output", out,
                  "--garment", f"upper={samples['upper']}",
                  "--garment", f"hat={samples['hat']}",
                  "--prompt", "a person in a red hat", *quick_flags(tiny_files))
    assert proc.returncode == 0, proc.stderr
    assert "[" in proc.stderr and "2/2 Sampler" in proc.stderr, proc.stderr  # websocket progress
    printed = proc.stdout.split()
    assert sorted(os.path.basename(p) for p in printed) == [
        "anydressing_upper_lower_hat_attention_maps_00.png", "anydressing_upper_lower_hat_result_00.png"]
    assert all(os.path.isfile(p) for p in printed)


def test_invalid_graph_exits_2_with_node_errors(e2e_server, tiny_files, tmp_path):
    out = tmp_path / "out"
    proc = runner("run", "single_garment", "--server", e2e_server.url, "--output", out,
                  "--set", "Apply AnyDressing.strength=99", *quick_flags(tiny_files))
    assert proc.returncode == 2
    assert "rejected the workflow" in proc.stderr, proc.stderr
    assert "'Apply AnyDressing' (node " in proc.stderr and "AnyDressingApply), input strength: " in proc.stderr
    assert not out.exists()


def test_unknown_node_exits_2(e2e_server, tmp_path):
    wf = tmp_path / "unknown.json"
    wf.write_text(json.dumps({"1": {"class_type": "NoSuchNodeAnywhere", "inputs": {}},
                              "2": {"class_type": "AnyDressingMadeUp", "inputs": {}}}))
    proc = runner("run", wf, "--server", e2e_server.url, "--output", tmp_path / "out")
    assert proc.returncode == 2
    assert "NoSuchNodeAnywhere (node 1)" in proc.stderr and "ComfyUI-AnyDressing" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_garment_file_exits_2_before_any_server(tmp_path):
    proc = runner("run", "single_garment", "--garment", f"upper={tmp_path / 'nope.png'}", "--output",
                  tmp_path / "out", timeout=60)
    assert proc.returncode == 2
    assert "file not found" in proc.stderr and "nope.png" in proc.stderr
    assert "starting ComfyUI" not in proc.stderr and not (tmp_path / "out").exists()


def test_server_unreachable_exits_3(samples, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = runner("run", "single_garment", "--server", url, "--output", tmp_path / "out", timeout=60)
    assert proc.returncode == 3
    assert f"cannot reach ComfyUI at {url}" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_port_taken_exits_3(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = runner("run", "single_garment", "--port", port, "--output", tmp_path / "out", timeout=60)
    assert proc.returncode == 3
    assert f"port {port}" in proc.stderr and "taken" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_ui_format_file_is_refused_with_a_pointer(tmp_path):
    proc = runner("run", PACK_DIR / "workflows" / "anydressing_single_garment.json", "--output", tmp_path, timeout=60)
    assert proc.returncode == 2 and "UI-format" in proc.stderr and "workflows/api" in proc.stderr


@pytest.mark.slow
def test_demo_runs_offline_and_says_noise(tmp_path, tiny_files):
    """The README's one command, on the tiny model (starts its own server; sizes kept small here)."""
    out = tmp_path / "demo"
    proc = runner("demo", "--output", out, "--steps", 2, "--width", 64, "--height", 64, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PICTURES ARE NOISE" in proc.stderr
    assert (out / "demo_result_00.png").is_file() and (out / "demo_attention_maps_00.png").is_file()
    assert str(out / "demo_result_00.png") in proc.stdout
    assert (out / "inputs" / "hat.png").is_file()


@pytest.mark.slow
def test_run_starts_its_own_server_with_model_files_given_as_paths(samples, tiny_files, tmp_path, comfyui_path):
    """No --server: the runner starts a headless ComfyUI (CPU here) whose input, output, temp, user folders
    and database are its own, registers the folders of the checkpoint and LoRA files it was given, runs,
    saves, and stops the server; the ComfyUI folder is exactly as before."""
    before = snapshot(comfyui_path)
    out = tmp_path / "out"
    bare = BARE_PYTHON or sys.executable  # the runner needs no torch; the server gets ComfyUI's Python
    proc = runner("run", "lora", "--checkpoint", tiny_files["checkpoint"], "--lora", tiny_files["lora"],
                  "--cpu", "--output", out, "--quiet", "--steps", 2, "--width", 64, "--height", 64,
                  "--garment-size", "64x64", "--garment", f"upper={samples['upper']}",
                  "--garment", f"lower={samples['lower']}", "--verbose", "--python", sys.executable, python=bare)
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = next(line for line in proc.stderr.splitlines() if "starting ComfyUI" in line)  # --verbose logs it
    for flag in ("--cpu", "--input-directory", "--output-directory", "--temp-directory", "--user-directory",
                 "--database-url sqlite:///"):
        assert flag in command, f"{flag} missing from the started server's command: {command}"
    assert str(comfyui_path) + "/" not in command.split("(cwd")[0], "a folder of the ComfyUI install was given"
    assert (out / "anydressing_lora_result_00.png").is_file()
    changes = compare(before, snapshot(comfyui_path))
    assert not any(changes.values()), changes


@pytest.mark.skipif(BARE_PYTHON is None, reason="no Python without torch on this machine")
def test_a_python_without_torch_is_told_to_pass_comfyuis_python(tmp_path):
    (tmp_path / "comfy").mkdir()
    (tmp_path / "main.py").write_text("")
    proc = runner("run", "single_garment", "--comfyui", tmp_path, "--output", tmp_path / "out", python=BARE_PYTHON,
                  timeout=60)
    assert proc.returncode == 3 and "has no torch" in proc.stderr and "--python" in proc.stderr, proc.stderr
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    proc = runner("run", "single_garment", "--comfyui", tmp_path, "--output", tmp_path / "out", "--verbose",
                  python=BARE_PYTHON, timeout=120)
    assert f"starting ComfyUI: {tmp_path / 'venv' / 'bin' / 'python'} main.py" in proc.stderr, proc.stderr


def test_node_error_before_sampling_is_one_clean_line_and_exit_2(e2e_server, tiny_files, tmp_path):
    """A 1x1 garment picture: the Garment node's own message on one line (its title, the input), no module
    path in front of it, no traceback unless --verbose, exit 2."""
    tiny = tmp_path / "one_pixel.png"
    cv2.imwrite(str(tiny), np.full((1, 1, 3), 128, np.uint8))
    args = ["run", "single_garment", "--server", e2e_server.url, "--output", tmp_path / "out", "--no-probe",
            "--quiet", "--garment", f"upper={tiny}", *quick_flags(tiny_files)]
    proc = runner(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("anydressing-run: error:")]
    assert len(errors) == 1, proc.stderr
    assert "'Garment: upper' (node " in errors[0] and "AnyDressingGarment), input image: " in errors[0]
    assert "at least 16x16" in errors[0]
    assert 'File "' not in proc.stderr and "anydressing_core.errors" not in proc.stderr, proc.stderr
    assert "--verbose" in lines[-1]
    verbose = runner(*args, "--verbose")
    assert verbose.returncode == 2 and "the server's traceback:" in verbose.stderr
    assert 'File "' in verbose.stderr and "raise AnyDressingError" in verbose.stderr


def test_settings_and_expected_time_are_said_before_sampling(e2e_server, tiny_files, samples, tmp_path):
    """On this CPU-only server ``auto`` picks cpu-preview (command-line sizes win); the probe's estimate is
    printed before the sampler's first step."""
    proc = runner("run", "single_garment", "--server", e2e_server.url, "--output", tmp_path / "out",
                  *quick_flags(tiny_files))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    settings = next(i for i, line in enumerate(lines) if line.startswith("settings: "))
    assert "cpu-preview (auto: the server has no GPU): 64x64, 2 steps, 1 garment(s) at 64x64" in lines[settings]
    expected = next(i for i, line in enumerate(lines) if line.startswith("expected: about "))
    first_step = next(i for i, line in enumerate(lines) if "Sampler" in line and "/2 " in line)
    took = next(i for i, line in enumerate(lines) if line.startswith("the server took "))
    assert settings < expected < first_step < took, lines
    assert "s per step x 2 steps" in lines[expected] and "(1 against 3 steps)" in lines[expected]
    assert not (tmp_path / "out" / "PreviewAny").exists() and len(list((tmp_path / "out").iterdir())) == 2


def test_comfyui_starts_without_an_import_failure(e2e_server):
    """The environment setup_env.sh builds has everything ComfyUI imports at start (torchaudio included)."""
    log = e2e_server.log_path.read_text(errors="replace")
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    if failed and subprocess.run([e2e_server.python, "-c", "import torchaudio"], capture_output=True).returncode:
        pytest.skip("ENVIRONMENT: torchaudio is missing from this Python, so ComfyUI's audio nodes fail to import; "
                    "scripts/setup_env.sh installs it")
    assert not failed, "\n".join(failed)
