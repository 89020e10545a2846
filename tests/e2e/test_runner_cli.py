"""The runner's command line as users call it: ``python -m anydressing_run ...`` in a subprocess.

Bad input fails fast, with a message and a non-zero exit, and leaves no output behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from anydressing_run.server import PACK_DIR, free_port

from e2e_support import QUICK, tiny_cache


def runner(*args, timeout=600):
    env = dict(os.environ, ANYDRESSING_TINY_MODELS=str(tiny_cache()))
    env.pop("ANYDRESSING_SERVER", None)
    return subprocess.run([sys.executable, "-m", "anydressing_run", *map(str, args)], cwd=PACK_DIR,
                          capture_output=True, text=True, timeout=timeout, env=env)


def quick_flags(tiny_files):
    return ["--steps", QUICK["steps"], "--width", QUICK["width"], "--height", QUICK["height"],
            "--garment-size", "64x64", "--seed", QUICK["seed"], "--checkpoint", tiny_files["checkpoint"].name]


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
                  "--garment", f"upper={samples['anydressing_upper.png']}",
                  "--garment", f"hat={samples['anydressing_hat.png']}",
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
    assert "rejected the workflow" in proc.stderr and "(AnyDressingApply)" in proc.stderr, proc.stderr
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
    assert (out / "inputs" / "anydressing_hat.png").is_file()


@pytest.mark.slow
def test_run_starts_its_own_server_with_model_files_given_as_paths(samples, tiny_files, tmp_path):
    """No --server: the runner starts a headless ComfyUI (CPU here), registers the folders of the checkpoint
    and LoRA files it was given, runs, saves, and stops the server."""
    out = tmp_path / "out"
    proc = runner("run", "lora", "--checkpoint", tiny_files["checkpoint"], "--lora", tiny_files["lora"],
                  "--cpu", "--output", out, "--quiet", "--steps", 2, "--width", 64, "--height", 64,
                  "--garment-size", "64x64", "--garment", f"upper={samples['anydressing_upper.png']}",
                  "--garment", f"lower={samples['anydressing_lower.png']}", "--verbose")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--cpu" in proc.stderr and "starting ComfyUI" in proc.stderr  # --verbose logs the command
    assert (out / "anydressing_lora_result_00.png").is_file()
