"""API-format graphs (``{node_id: {"class_type", "inputs", "_meta": {"title"}}}``): building and editing.

A link is ``[source_node_id, output_index]``; every other input value is a widget value.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .errors import RunnerError


SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class Node:
    """A handle on a node being built: ``node[1]`` is a link to its second output, ``node`` alone the first."""

    def __init__(self, node_id: str):
        self.id = node_id

    def __getitem__(self, index: int) -> list:
        return [self.id, index]


class GraphBuilder:
    def __init__(self):
        self.graph: dict = {}

    def add(self, class_type: str, title: str | None = None, **inputs) -> Node:
        node_id = str(len(self.graph) + 1)
        values = {}
        for name, value in inputs.items():
            if isinstance(value, Node):
                value = value[0]
            values[name] = value
        self.graph[node_id] = {"class_type": class_type, "inputs": values}
        if title:
            self.graph[node_id]["_meta"] = {"title": title}
        return Node(node_id)


def load_graph(path) -> dict:
    """Read an API-format workflow; a UI-format file gets a message that says which file to use instead."""
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"workflow file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise RunnerError(f"{path} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise RunnerError(f"{path} is a UI-format workflow (what the editor loads). The runner needs the API "
                          "format: use the twin in workflows/api/, or in the editor use Workflow > Export (API).")
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise RunnerError(f"{path} is not an API-format workflow: expected {{node_id: {{class_type, inputs}}}}")
    return data


def title(graph: dict, node_id: str) -> str:
    return (graph[node_id].get("_meta") or {}).get("title") or graph[node_id]["class_type"]


def nodes_of(graph: dict, class_type: str) -> list:
    """Ids of nodes of one type, in numeric id order."""
    return sorted((k for k, v in graph.items() if v["class_type"] == class_type), key=_id_key)


def consumers(graph: dict, node_id: str, output: int | None = None) -> list:
    """``(consumer_id, input_name)`` of every input linked to ``node_id`` (one output, or any)."""
    found = []
    for nid in sorted(graph, key=_id_key):
        for name, value in graph[nid]["inputs"].items():
            if is_link(value) and value[0] == node_id and (output is None or value[1] == output):
                found.append((nid, name))
    return found


def upstream(graph: dict, node_id: str) -> set:
    """``node_id`` and every node it depends on through links."""
    seen, todo = set(), [node_id]
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in graph:
            continue
        seen.add(nid)
        todo.extend(v[0] for v in graph[nid]["inputs"].values() if is_link(v))
    return seen


def before_sampling(graph: dict, node_id: str) -> bool:
    """True when ``node_id`` feeds a sampler (strictly upstream), so it runs before any sampling starts."""
    return any(node_id in upstream(graph, s) - {s} for t in SAMPLERS for s in nodes_of(graph, t))


def label(graph: dict, node_id) -> str:
    """``'Garment: upper' (node 3, AnyDressingGarment)``, or ``KSampler (node 7)`` for an untitled node."""
    node = graph.get(str(node_id)) or {}
    cls = node.get("class_type", "?")
    name = (node.get("_meta") or {}).get("title")
    return f"'{name}' (node {node_id}, {cls})" if name and name != cls else f"{cls} (node {node_id})"


def find_node(graph: dict, ref: str) -> str:
    """A node by id or by title (case-insensitive); RunnerError listing the titles when nothing matches."""
    if ref in graph:
        return ref
    matches = [k for k in graph if title(graph, k).lower() == ref.lower()]
    if len(matches) == 1:
        return matches[0]
    titles = ", ".join(f"{k}: {title(graph, k)!r}" for k in sorted(graph, key=_id_key))
    what = "several nodes are" if matches else "no node is"
    raise RunnerError(f"{what} called {ref!r} in this workflow; use a node id or one of the titles: {titles}")


def set_input(graph: dict, node_id: str, name: str, value) -> None:
    inputs = graph[node_id]["inputs"]
    if name in inputs and is_link(inputs[name]):
        raise RunnerError(f"node {node_id} ({title(graph, node_id)}) input {name!r} is a link, not a value")
    inputs[name] = value


def parse_value(text: str):
    """``--set`` values: JSON when it parses (numbers, true/false, quoted strings), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(graph: dict, assignments) -> dict:
    """``["node.input=value", ...]`` where node is an id or a title; returns a modified deep copy."""
    graph = copy.deepcopy(graph)
    for item in assignments or ():
        target, sep, value = item.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not sep or not dot or not name:
            raise RunnerError(f"--set expects NODE.INPUT=VALUE (NODE is an id or a title), got {item!r}")
        set_input(graph, find_node(graph, node_ref), name, parse_value(value))
    return graph


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
