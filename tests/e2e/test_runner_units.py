"""The runner's graph editing on the shipped workflows (no server needed)."""

from __future__ import annotations

import pytest

from anydressing_run.errors import RunnerError
from anydressing_run.graph import apply_sets, find_node, load_graph
from anydressing_run.run import Substitutions, substitute
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
    assert by_title(out, "Garment image: lower")["image"] == "anydressing_lower.png"
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
