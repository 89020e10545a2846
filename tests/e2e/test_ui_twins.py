"""Every UI workflow and its API twin describe the same graph (same nodes, links, values and titles).

The UI file is read back with the editor's widget rules (anydressing_run.uiformat.ui_to_api) against the live
server's node schemas, so a node whose inputs changed order or gained a widget shows up here.
"""

from __future__ import annotations

import pytest

from anydressing_run.uiformat import VIRTUAL_NODES, ui_to_api
from anydressing_run.workflow_specs import SDXL_WORKFLOWS, WORKFLOWS

from e2e_support import load_api, load_ui


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_ui_and_api_twins_describe_the_same_graph(name, object_info):
    ui, api = load_ui(name), load_api(name)
    assert ui_to_api(ui, object_info) == api


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_ui_links_are_consistent(name):
    """Each link appears on both ends with matching slots and types (what the editor checks on load)."""
    ui = load_ui(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max(link[0] for link in ui["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == inp["type"] == typ
    notes = [n for n in ui["nodes"] if n["type"] in VIRTUAL_NODES]
    assert len(notes) == 1 and "AnyDressing" in notes[0]["widgets_values"][0]


def test_paper_defaults_in_shipped_workflows():
    """[paper] strength 0.7, cfg 6, DDIM 30 steps, 576x768 in every workflow that samples from scratch (SDXL's
    sizes: tests/e2e/test_sdxl_workflows.py)."""
    for name in WORKFLOWS:
        if name in SDXL_WORKFLOWS:
            continue
        graph = load_api(name)
        for node in graph.values():
            inputs = node["inputs"]
            if node["class_type"] == "AnyDressingApply":
                assert inputs["strength"] == 0.7, name
            if node["class_type"] == "KSampler":
                assert (inputs["cfg"], inputs["steps"], inputs["sampler_name"], inputs["scheduler"]) == \
                    (6.0, 30, "ddim", "ddim_uniform"), name
            if node["class_type"] in ("EmptyLatentImage", "ImageScale"):
                assert (inputs["width"], inputs["height"]) == (576, 768), name
