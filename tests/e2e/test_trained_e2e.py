"""Train on the checkpoint you sample with, then dress with the export in a real headless ComfyUI.

The trainer (its CLI, one CPU process) takes the tiny SD1.5 single-file checkpoint the server loads, trains a few
steps on synthetic mannequins and exports; the export goes into the server's models/anydressing folder and an API
graph loads it with AnyDressing Loader.  The result must differ from the same graph at strength 0, which must
equal the graph without AnyDressing bit for bit.  The figures (steps, time, how much the picture changes) are
written to artifacts/e2e/trained.json.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from anydressing_core.checkpoint import load_checkpoint
from anydressing_core.single_file import file_sha256
from anydressing_run.run import Substitutions, run_workflow
from anydressing_run.trained import dressing_graph, pixel_difference, train, write_data
from anydressing_run.workflow_specs import sample

from e2e_support import ARTIFACTS

pytestmark = pytest.mark.slow
STEPS = 4
GARMENTS = [("upper", sample("upper")), ("lower", sample("lower"))]  # uploaded by the samples fixture
PROMPT = "a full-body photo of a person wearing a t-shirt and trousers"


@pytest.fixture(scope="module")
def trained(tiny_files, comfyui_path, server_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    manifest = write_data(root / "data", comfyui_path, size=64)
    result = train(tiny_files["checkpoint"], manifest, root / "run", comfyui_path, steps=STEPS, size=64)
    folder = server_base / "models" / "anydressing"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(result["export"], folder / "trained.safetensors")
    return result


def _run(client, tiny_files, tmp_path, name, **kw):
    graph = dressing_graph(tiny_files["checkpoint"].name, GARMENTS, PROMPT, **kw)
    return run_workflow(graph, client, Substitutions(), tmp_path / name, stem=name, progress=False)[0]


def test_the_export_records_the_base_it_was_trained_on(trained, tiny_files):
    adapter = load_checkpoint(trained["export"])
    assert trained["step"] == STEPS and trained["weights_agree"]
    assert adapter.meta.base == "sd15" and len(adapter.meta.layers) == 7  # the tiny UNet's attn1 layers
    assert adapter.meta.base_checkpoint == {"file": tiny_files["checkpoint"].name,
                                            "sha256": file_sha256(tiny_files["checkpoint"]),
                                            "bytes": tiny_files["checkpoint"].stat().st_size}
    assert adapter.meta.base_fingerprint["kind"] == "norm2-8" and len(adapter.meta.base_fingerprint["layers"]) == 7


def test_trained_export_dresses_through_a_real_server(trained, client, tiny_files, samples, e2e_server, tmp_path):
    dressed = _run(client, tiny_files, tmp_path, "trained", adapter="trained.safetensors", strength=0.7)
    neutral = _run(client, tiny_files, tmp_path, "strength0", adapter="trained.safetensors", strength=0.0)
    plain = _run(client, tiny_files, tmp_path, "plain", dress=False)
    zero_shot = _run(client, tiny_files, tmp_path, "zero_shot", strength=0.7)
    assert pixel_difference(neutral, plain) == 0.0, "strength 0 must give the plain graph's pixels bit for bit"
    figures = {"steps": trained["step"], "train_seconds": round(trained["seconds"], 1),
               "steps_per_s": round(trained["steps_per_s"], 3), "loss_total": trained["total"],
               "trained_vs_strength0": pixel_difference(dressed, neutral),
               "trained_vs_zero_shot": pixel_difference(dressed, zero_shot),
               "zero_shot_vs_strength0": pixel_difference(zero_shot, neutral)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "trained.json").write_text(json.dumps(figures, indent=1))
    assert figures["trained_vs_strength0"] > 0, figures
    assert figures["trained_vs_zero_shot"] > 0, "the trained weights must change the result beyond zero-shot"
    log = e2e_server.log_path.read_text(errors="replace")
    assert "does not look like the checkpoint" not in log, "the base it was trained on must not be flagged"


def test_export_from_a_checkpoint_of_a_single_file_run_equals_the_automatic_export(trained, tiny_files, tmp_path):
    """``export --checkpoint`` rebuilds the module from the single-file base alone (UNet only) and records it too."""
    import subprocess
    import sys
    from pathlib import Path

    from anydressing_run.server import PACK_DIR
    from anydressing_run.trained import train_overrides

    run = Path(trained["export"]).parent
    out = tmp_path / "again.safetensors"
    overrides = train_overrides(tiny_files["checkpoint"], run.parent / "data" / "train.jsonl", run, STEPS, 64)
    proc = subprocess.run([sys.executable, "-m", "anydressing_core.train", "export", "--checkpoint",
                           str(run / "checkpoints" / f"step_{STEPS:08d}"), "--out", str(out), *overrides],
                          cwd=PACK_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    auto, again = load_checkpoint(trained["export"]), load_checkpoint(str(out))
    assert auto.meta.base_checkpoint == again.meta.base_checkpoint
    assert auto.meta.base_fingerprint == again.meta.base_fingerprint
    a, b = auto.tensors(), again.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
