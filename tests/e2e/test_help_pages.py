"""Node help pages: one per AnyDressing node, served where the editor's help panel fetches them
(``/extensions/<pack folder>/docs/<NodeId>.md``), and every input documented on its page."""

from __future__ import annotations

import urllib.error

import pytest

from anydressing_run.server import PACK_DIR

DOCS = PACK_DIR / "web" / "docs"


def our_nodes(object_info) -> dict:
    return {k: v for k, v in object_info.items() if v.get("category", "").startswith("AnyDressing")}


def test_every_node_has_a_served_help_page(object_info, client):
    nodes = our_nodes(object_info)
    assert nodes
    for node_id, info in nodes.items():
        pack = info["python_module"].split(".", 1)[1]  # "custom_nodes.<folder>", as the editor derives it
        try:
            text = client.get_bytes(f"/extensions/{pack}/docs/{node_id}.md").decode()
        except urllib.error.HTTPError as exc:
            pytest.fail(f"help page of {node_id} not served (HTTP {exc.code}); is WEB_DIRECTORY set?")
        assert text == (DOCS / f"{node_id}.md").read_text()


def test_help_pages_name_every_input_and_no_unknown_node(object_info):
    nodes = our_nodes(object_info)
    assert {p.stem for p in DOCS.glob("*.md")} == set(nodes), "a help page per node, and none for a missing node"
    for node_id, info in nodes.items():
        text = (DOCS / f"{node_id}.md").read_text()
        for section in ("required", "optional"):
            for name in (info["input"].get(section) or {}):
                assert f"**{name}**" in text or f"| {name} " in text, f"{node_id}.md does not explain {name!r}"


def test_every_input_has_a_tooltip(object_info):
    for node_id, info in our_nodes(object_info).items():
        assert info.get("description"), f"{node_id} has no description"
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
