"""Bad input and an interrupt through a real headless ComfyUI: each prompt fails with the pack's message, and
the server then answers the next normal prompt with exactly the picture it gave before.

Uses the session server of tests/e2e/conftest.py (tiny random models, 64x64, 2 steps). The normal prompt is
the shipped single-garment workflow; between its first run and its last, the server sees: a 1x1 garment
picture, an opaque picture's (empty) LoadImage mask wired as the garment mask, 9 chained garments, a truncated
and a pickled weight file through Load AnyDressing Weights (the pickle's code must not run), a path-traversal
weight name (rejected by validation) and a Cancel (POST /interrupt) in the middle of sampling.
"""

from __future__ import annotations

import copy
import time

import cv2
import numpy as np
import pytest
import torch

from anydressing_run.errors import RunnerError
from e2e_support import load_api

pytestmark = pytest.mark.slow

UPPER = "anydressing/upper.png"  # uploaded into the server's input folder by the samples fixture


def normal_graph(tiny_files, seed=1, steps=2) -> dict:
    g = copy.deepcopy(load_api("anydressing_single_garment"))
    for node in g.values():
        c, i = node["class_type"], node["inputs"]
        if c == "CheckpointLoaderSimple":
            i["ckpt_name"] = tiny_files["checkpoint"].name
        elif c == "EmptyLatentImage":
            i["width"] = i["height"] = 64
        elif c == "AnyDressingEncodeGarments":
            i["width"] = i["height"] = 64
        elif c == "KSampler":
            i["seed"], i["steps"] = seed, steps
        elif c == "LoadImage":
            i["image"] = UPPER
    return g


def node_id(graph, class_type):
    return next(k for k, v in graph.items() if v["class_type"] == class_type)


def run(client, graph, timeout=600):
    """Queue, wait; returns ``(history entry, decoded result pixels)``."""
    pid = client.queue(graph)
    entry = client.wait(pid, graph, timeout=timeout)
    save = next(k for k, v in graph.items() if v["class_type"] == "SaveImage" and "attention" not in
                v["inputs"]["filename_prefix"])
    image = entry["outputs"][save]["images"][0]
    pixels = cv2.imdecode(np.frombuffer(client.view(image), np.uint8), cv2.IMREAD_UNCHANGED)
    return entry, pixels


def failed(client, graph, match, exit_code):
    with pytest.raises(RunnerError) as err:
        pid = client.queue(graph)
        client.wait(pid, graph, timeout=600)
    assert err.value.exit_code == exit_code, str(err.value)
    assert match in str(err.value), str(err.value)
    return str(err.value)


def cached_nodes(entry) -> set:
    nodes = set()
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_cached":
            nodes.update(data.get("nodes", []))
    return nodes


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def loader_graph(tiny_files, name) -> dict:
    g = normal_graph(tiny_files)
    ckpt, enc = node_id(g, "CheckpointLoaderSimple"), node_id(g, "AnyDressingEncodeGarments")
    g["90"] = {"class_type": "AnyDressingLoader", "inputs": {"anydressing_name": name, "model": [ckpt, 0]}}
    g[enc]["inputs"]["model"] = ["90", 0]
    g[enc]["inputs"]["adapter"] = ["90", 1]
    return g


def test_bad_prompts_fail_clearly_and_the_next_normal_prompt_is_unchanged(client, e2e_server, tiny_files, samples):
    base = e2e_server.base_directory
    first, before = run(client, normal_graph(tiny_files))
    run(client, normal_graph(tiny_files, seed=2))  # a different sample, so the last run cannot come from the cache

    # 1x1 garment picture
    cv2.imwrite(str(base / "input" / "one_pixel.png"), np.full((1, 1, 3), 128, np.uint8))
    g = normal_graph(tiny_files)
    g[node_id(g, "LoadImage")]["inputs"]["image"] = "one_pixel.png"
    failed(client, g, "at least 16x16", exit_code=2)

    # an opaque picture's LoadImage mask (all 0) wired as the garment mask
    g = normal_graph(tiny_files)
    load, garment = node_id(g, "LoadImage"), node_id(g, "AnyDressingGarment")
    g[garment]["inputs"]["mask"] = [load, 1]
    failed(client, g, "is empty", exit_code=2)

    # 9 chained garments
    g = normal_graph(tiny_files)
    prev = [garment, 0]
    for i in range(8):
        g[f"5{i}"] = {"class_type": "AnyDressingGarment",
                      "inputs": {"image": [load, 0], "slot": "upper", "weight": 1.0, "garments": prev}}
        prev = [f"5{i}", 0]
    g[node_id(g, "AnyDressingEncodeGarments")]["inputs"]["garments"] = prev
    failed(client, g, "at most 8 garments", exit_code=2)

    # bad weight files through the loader (models/anydressing under the server's base directory)
    folder = base / "models" / "anydressing"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    marker = base / "PWNED"
    torch.save({"w": torch.zeros(2), "x": Evil(marker)}, str(folder / "pickled.safetensors"))
    info = client.get_json("/object_info/AnyDressingLoader")
    spec = info["AnyDressingLoader"]["input"]["required"]["anydressing_name"]
    listed = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 combos carry their options in the dict
    assert {"truncated.safetensors", "pickled.safetensors"} <= set(listed), listed
    failed(client, loader_graph(tiny_files, "truncated.safetensors"), "not a readable safetensors", exit_code=2)
    failed(client, loader_graph(tiny_files, "pickled.safetensors"), "pickled torch file", exit_code=2)
    assert not marker.exists(), "the server executed code from a weight file"
    with pytest.raises(RunnerError) as err:  # validation: the name is not in the list
        client.queue(loader_graph(tiny_files, "../checkpoints/" + tiny_files["checkpoint"].name))
    assert "anydressing_name" in str(err.value)

    # Cancel in the middle of sampling
    g = normal_graph(tiny_files, seed=3, steps=200)
    pid = client.queue(g)
    deadline = time.monotonic() + 120
    while not client.get_json("/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    client.post_json("/interrupt", {"prompt_id": pid})
    with pytest.raises(RunnerError, match="interrupted"):
        client.wait(pid, g, timeout=600)

    # the server answers normally: the same picture, really recomputed
    entry, after = run(client, normal_graph(tiny_files))
    assert node_id(normal_graph(tiny_files), "KSampler") not in cached_nodes(entry), "the last run came from the cache"
    assert np.array_equal(after, before), "the normal prompt gives another picture after the bad ones"
    assert client.get_json("/queue") == {"queue_running": [], "queue_pending": []}
