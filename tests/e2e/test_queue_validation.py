"""Bad widget values are refused when the prompt is queued, before any node runs, with a message that names the
node and the input; a classic-format graph's values pass the same checks; the server serves the next prompt."""

from __future__ import annotations

import copy

import pytest

from anydressing_run.errors import RunnerError
from anydressing_run.workflow_specs import sample
from e2e_support import load_api

pytestmark = pytest.mark.slow


def graph(tiny_files) -> dict:
    g = copy.deepcopy(load_api("anydressing_single_garment"))
    for node in g.values():
        c, i = node["class_type"], node["inputs"]
        if c == "CheckpointLoaderSimple":
            i["ckpt_name"] = tiny_files["checkpoint"].name
        elif c in ("EmptyLatentImage", "AnyDressingEncodeGarments"):
            i["width"] = i["height"] = 64
        elif c == "KSampler":
            i["steps"] = 1
        elif c == "LoadImage":
            i["image"] = sample("upper")
    return g


def node_of(g, class_type):
    return next(k for k, v in g.items() if v["class_type"] == class_type)


CASES = {
    "unknown slot": ("AnyDressingGarment", "slot", "cape", "unknown slot 'cape'"),
    "negative strength": ("AnyDressingApply", "strength", -0.5, "smaller than min of 0.0"),  # ComfyUI's own check
    "start after end": ("AnyDressingApply", "start_percent", 0.9, "start <= end"),
    "garment size not a multiple of 64": ("AnyDressingEncodeGarments", "width", 100, "multiples of 64"),
    "unknown form": ("AnyDressingApply", "form", "both", "unknown form 'both'"),
    "missing required input": ("AnyDressingApply", "features", None, "Required input is missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_refused_at_queue_time(case, client, tiny_files, samples):
    class_type, name, value, message = CASES[case]
    g = graph(tiny_files)
    nid = node_of(g, class_type)
    if class_type == "AnyDressingApply" and name == "start_percent":
        g[nid]["inputs"]["end_percent"] = 0.2
    if value is None:
        del g[nid]["inputs"][name]
    else:
        g[nid]["inputs"][name] = value
    with pytest.raises(RunnerError) as err:
        client.queue(g)
    body = getattr(err.value, "body", None) or {}
    assert nid in body.get("node_errors", {}), f"{case}: node {nid} not named in {body}"
    errors = body["node_errors"][nid]["errors"]
    text = " ".join(f"{e.get('message')} {e.get('details')}" for e in errors)
    assert name in text and message in text, f"{case}: {text}"
    # the message is attached to the input concerned (and, for rules across inputs, to its partners), not to all
    named = {(e.get("extra_info") or {}).get("input_name") for e in errors}
    assert name in named and len(named) <= 4, f"{case}: the error is attached to {sorted(named)}"
    assert client.get_json("/queue")["queue_pending"] == [], "a refused prompt was queued"


def test_the_server_serves_the_next_prompt(client, tiny_files, samples):
    """After the refusals above, the untouched graph (classic values) is accepted and runs."""
    g = graph(tiny_files)
    pid = client.queue(g)
    entry = client.wait(pid, g, timeout=600)
    assert entry["status"]["status_str"] == "success"
