"""The runner's graph editing, presets, time estimate and error lines on the shipped workflows (no server)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from anydressing_run import presets
from anydressing_run.client import ProgressBar, content_name, execution_error, format_node_errors
from anydressing_run.errors import RunnerError
from anydressing_run.estimate import PROBE_OUTPUT, Measurement, probe_graph, run_shape, step_gflop
from anydressing_run.graph import apply_sets, before_sampling, find_node, load_graph, upstream
from anydressing_run.run import Substitutions, cpu_advice, substitute
from anydressing_run.uiformat import api_to_ui, ui_to_api

from e2e_support import WORKFLOWS_DIR, load_api


def by_title(graph, title):
    return graph[find_node(graph, title)]["inputs"]


def test_prompt_is_found_through_the_controlnet_node():
    graph = load_api("anydressing_openpose_controlnet")
    out = substitute(graph, Substitutions(prompt="P", negative="N"), {})
    assert by_title(out, "Positive prompt")["text"] == "P"
    assert by_title(out, "Negative prompt")["text"] == "N"
    assert by_title(graph, "Positive prompt")["text"] != "P", "the input graph must not be modified"


def test_garments_seed_sizes_and_models_are_substituted():
    graph = load_api("anydressing_upper_lower_hat")
    subs = Substitutions(garments=[("hat", "h.png"), ("upper", "u.png")], seed=9, steps=3, width=64,
                         height=96, garment_size=(64, 128), checkpoint="tiny.safetensors")
    out = substitute(graph, subs, {"h.png": "anydressing/h.png", "u.png": "anydressing/u.png"})
    assert by_title(out, "Garment image: hat")["image"] == "anydressing/h.png"
    assert by_title(out, "Garment image: upper")["image"] == "anydressing/u.png"
    assert by_title(out, "Garment image: lower")["image"] == "anydressing/lower.png"
    assert by_title(out, "Sampler")["seed"] == by_title(out, "Garment attention maps")["seed"] == 9
    assert by_title(out, "Sampler")["steps"] == 3
    assert (by_title(out, "Output size")["width"], by_title(out, "Output size")["height"]) == (64, 96)
    assert (by_title(out, "Encode Garments")["width"], by_title(out, "Encode Garments")["height"]) == (64, 128)
    assert by_title(out, "Checkpoint")["ckpt_name"] == "tiny.safetensors"


def test_set_by_title_and_by_id_and_clear_errors():
    graph = load_api("anydressing_single_garment")
    out = apply_sets(graph, ["Apply AnyDressing.strength=0.5", "Positive prompt.text=a hat", "1.ckpt_name=x"])
    assert by_title(out, "Apply AnyDressing")["strength"] == 0.5
    assert by_title(out, "Positive prompt")["text"] == "a hat" and out["1"]["inputs"]["ckpt_name"] == "x"
    with pytest.raises(RunnerError, match="no node is called 'Nope'"):
        apply_sets(graph, ["Nope.x=1"])
    with pytest.raises(RunnerError, match="is a link"):
        apply_sets(graph, ["Sampler.model=1"])
    with pytest.raises(RunnerError, match="NODE.INPUT=VALUE"):
        apply_sets(graph, ["strength=1"])


def test_image_by_title_must_be_a_loader():
    graph = load_api("anydressing_tryon_inpaint")
    out = substitute(graph, Substitutions(images=[("Person photo", "me.png")]), {"me.png": "anydressing/me.png"})
    assert by_title(out, "Person photo")["image"] == "anydressing/me.png"
    with pytest.raises(RunnerError, match="not a LoadImage"):
        substitute(graph, Substitutions(images=[("Sampler", "me.png")]), {"me.png": "x"})


def test_load_graph_refuses_ui_format_and_garbage(tmp_path):
    with pytest.raises(RunnerError, match="UI-format"):
        load_graph(WORKFLOWS_DIR / "anydressing_lora.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RunnerError, match="not valid JSON"):
        load_graph(bad)
    with pytest.raises(RunnerError, match="not found"):
        load_graph(tmp_path / "missing.json")


def test_widget_rules_round_trip_with_seed_control_and_upload_button():
    """KSampler's seed carries a control value, LoadImage an upload value: ui_to_api(api_to_ui(g)) == g."""
    info = {
        "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}},
                      "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
        "Maps": {"input": {"required": {"image": ["IMAGE", {}], "seed": ["INT", {}],
                                        "at": ["FLOAT", {"default": 0.5}]},
                           "optional": {"mask": ["MASK", {}], "flag": ["BOOLEAN", {"default": True}]}},
                 "output": ["IMAGE"], "output_name": ["IMAGE"]},
    }
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
             "2": {"class_type": "Maps", "inputs": {"image": ["1", 0], "seed": 5, "at": 0.25, "mask": ["1", 1],
                                                     "flag": False}}}
    ui = api_to_ui(graph, info)
    assert ui["nodes"][0]["widgets_values"] == ["b.png", "image"]
    assert ui["nodes"][1]["widgets_values"] == [5, "fixed", 0.25, False]
    assert ui_to_api(ui, info) == graph


def test_runner_modules_import_each_other_without_a_cycle():
    """Every intra-package import, including ones inside functions, forms an acyclic graph."""
    import ast

    from anydressing_run.server import PACK_DIR

    package = PACK_DIR / "anydressing_run"
    edges = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.add(node.module.split(".")[0] if node.module else "__init__")
        edges[path.stem] = deps - {path.stem}

    def visit(name, stack):
        assert name not in stack, f"import cycle: {' -> '.join([*stack, name])}"
        for dep in edges.get(name, ()):
            visit(dep, [*stack, name])

    for name in edges:
        if name not in ("__init__", "__main__"):
            visit(name, [])


def test_presets_fill_only_what_the_command_line_left_unset():
    preview, why = presets.choose("auto", server_on_cpu=True)
    assert preview.name == "cpu-preview" and "no GPU" in why
    assert presets.choose("auto", server_on_cpu=False)[0] is None  # a GPU keeps the workflow's values
    assert presets.choose("paper", server_on_cpu=True)[0] == presets.PRESETS["paper"]
    subs = presets.apply(Substitutions(steps=5), preview)
    assert (subs.width, subs.height, subs.steps, subs.garment_size) == (288, 384, 5, (192, 256))
    with pytest.raises(RunnerError, match="unknown preset"):
        presets.choose("fast", server_on_cpu=True)


def test_content_names_differ_exactly_when_the_pictures_differ():
    a, b = content_name("my top.PNG", b"one"), content_name("my top.PNG", b"two")
    assert a != b and a == content_name("other/my top.PNG", b"one")
    assert a.startswith("my_top-") and a.endswith(".png") and "/" not in a


def test_probe_graph_keeps_what_feeds_the_sampler_under_the_same_ids():
    graph = substitute(load_api("anydressing_tryon_inpaint"), Substitutions(steps=30, seed=5), {})
    shape = run_shape(graph)
    probe = probe_graph(graph, shape, (128, 128), steps=2, seed_offset=1)
    assert set(probe) - {PROBE_OUTPUT} == upstream(graph, shape.sampler)
    assert not {"SaveImage", "AnyDressingAttentionMaps", "VAEDecode"} & {n["class_type"] for n in probe.values()}
    assert probe[shape.sampler]["inputs"]["steps"] == 2 and probe[shape.sampler]["inputs"]["seed"] == 6
    assert probe[PROBE_OUTPUT] == {"class_type": "PreviewAny", "inputs": {"source": [shape.sampler, 0]},
                                   "_meta": {"title": "AnyDressing time probe"}}
    for nid, node in probe.items():
        if node["class_type"] == "ImageScale":
            assert (node["inputs"]["width"], node["inputs"]["height"]) == (128, 128)
        elif nid != PROBE_OUTPUT and nid != shape.sampler:
            assert node == graph[nid], f"node {nid} changed, so the real run could not reuse its cached output"


def test_step_cost_grows_faster_than_the_pixels_and_with_the_garments():
    small, paper = step_gflop(288, 384), step_gflop(576, 768)
    assert 4.0 < paper / small < 5.5  # 4x the pixels; self-attention grows with their square
    assert step_gflop(576, 768, garments=3) > paper
    estimate = Measurement(2.0, (128, 128), 10.0).estimate(run_shape(load_api("anydressing_upper_lower_hat")))
    assert estimate.steps == 30 and estimate.seconds_per_step > 2.0 * 30


def test_cpu_advice_for_the_paper_settings_names_the_faster_preset():
    shape = run_shape(load_api("anydressing_upper_lower_hat"))  # 576x768, 30 steps
    advice = cpu_advice(shape, Measurement(1.5, (128, 128), 5.0))
    assert "no GPU" in advice and "--preset cpu-preview (about" in advice and "min" in advice
    quick = substitute(load_api("anydressing_upper_lower_hat"),
                       presets.apply(Substitutions(), presets.PRESETS["cpu-preview"]), {})
    assert cpu_advice(run_shape(quick), Measurement(1.5, (128, 128), 5.0)) is None
    assert "tens of minutes" in cpu_advice(shape, None)


def test_node_errors_are_one_line_per_node_with_title_and_input():
    graph = load_api("anydressing_single_garment")
    apply = find_node(graph, "Apply AnyDressing")
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
            "node_errors": {apply: {"class_type": "AnyDressingApply", "errors": [
                {"type": "value_bigger_than_max", "message": "Value 99.0 bigger than max of 1.0",
                 "details": "strength", "extra_info": {"input_name": "strength"}},
                {"type": "value_smaller_than_min", "message": "Value -1 smaller than min of 0.0",
                 "details": "start_percent", "extra_info": {"input_name": "start_percent"}}]}}}
    lines = format_node_errors(body, graph).splitlines()
    assert lines == [f"  'Apply AnyDressing' (node {apply}, AnyDressingApply), input strength, start_percent: "
                     "Value 99.0 bigger than max of 1.0; Value -1 smaller than min of 0.0"]


def test_execution_errors_drop_the_module_path_and_tell_before_from_after_sampling():
    graph = load_api("anydressing_single_garment")
    garment, maps = find_node(graph, "Garment: upper"), find_node(graph, "Garment attention maps")
    assert before_sampling(graph, garment) and not before_sampling(graph, maps)

    def status(node, message, kind="custom_nodes.pack_x_ComfyUI.anydressing_core.errors.AnyDressingError"):
        return {"messages": [["execution_start", {}], ["execution_error", {
            "node_id": node, "node_type": graph[node]["class_type"], "exception_type": kind,
            "exception_message": message, "traceback": ["Traceback (most recent call last):\n", "  ...\n"]}]]}

    err = execution_error(status(garment, "garment image is 1x1;\n use a picture of at least 16x16"), graph)
    assert str(err) == (f"'Garment: upper' (node {garment}, AnyDressingGarment), input image: garment image is "
                        "1x1; use a picture of at least 16x16")
    assert err.exit_code == 2 and err.details.startswith("Traceback")
    err = execution_error(status(maps, "at_percent 0.5 lies outside the range", "builtins.RuntimeError"), graph)
    assert err.exit_code == 4 and "input at_percent: RuntimeError: at_percent 0.5" in str(err)


def test_progress_bar_shows_the_measured_time_per_step_and_what_is_left():
    stream = io.StringIO()
    bar = ProgressBar({"7": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "Sampler"}}}, stream)
    for value, now in ((1, 10.0), (2, 12.0), (3, 14.0)):
        bar.progress(value, 10, "7", now=now)
    last = stream.getvalue().splitlines()[-1]
    assert "3/10 Sampler (node 7)" in last and "2.00 s/step" in last and "about 14 s left" in last


@pytest.mark.slow
def test_step_cost_model_matches_the_flop_count_of_sd15(comfyui_path, tmp_path):
    """The runner's closed form against ``python -m benchmarks.flops`` (the real SD1.5 UNet counted on the
    meta device), plain step and Dressing-Attention's addition with 3 garments at the sampling size."""
    from anydressing_run.server import PACK_DIR

    sizes = [(128, 128), (288, 384), (576, 768)]
    out = tmp_path / "flops.json"
    cmd = [sys.executable, "-m", "benchmarks.flops", "--n", "3", "--json", str(out)]
    for w, h in sizes:
        cmd += ["--res", f"{w}x{h}"]
    proc = subprocess.run(cmd, cwd=PACK_DIR, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COMFYUI_PATH": str(comfyui_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row, (w, h) in zip(json.loads(out.read_text()), sizes):
        counted = row["unet_step_gflop"] + row["rows"][0]["added_gflop_per_step"]
        assert step_gflop(w, h, garments=3, garment_size=(w, h)) == pytest.approx(counted, rel=0.02), (w, h)


def test_in_process_host_writes_into_its_own_folders(host, comfyui_path):
    """The in-process ComfyUI of tests/conftest.py: every folder ComfyUI writes, and its database, lie
    outside the host install (sandbox.isolate_in_process)."""
    from comfy.cli_args import args

    fp = host.folder_paths
    folders = [fp.get_input_directory(), fp.get_output_directory(), fp.get_temp_directory(),
               fp.get_user_directory(), args.database_url.split("///", 1)[1]]
    for folder in folders:
        assert not os.path.realpath(folder).startswith(os.path.realpath(comfyui_path) + os.sep), folder
    assert len({os.path.dirname(os.path.realpath(f)) for f in folders[:4]}) == 1, "one root for all of them"


def test_shipped_sample_pictures_are_what_the_generator_draws(tmp_path):
    """workflows/inputs/anydressing/ holds write_samples' output (regenerated by make_workflows), pixel for pixel."""
    import cv2
    import numpy as np

    from anydressing_run.samples import SHIPPED_SEED, SHIPPED_SIZE, shipped_samples, write_samples

    drawn = write_samples(tmp_path, SHIPPED_SIZE, SHIPPED_SEED)
    for key, path in shipped_samples().items():
        shipped, fresh = cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.imread(str(drawn[key]), cv2.IMREAD_UNCHANGED)
        assert shipped is not None and np.array_equal(shipped, fresh), f"{path.name} differs from a fresh draw"
