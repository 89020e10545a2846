"""The real ComfyUI editor (frontend served by the e2e server) in headless Debian Chromium via playwright.

Never runs playwright's browser download: it drives /usr/bin/chromium (flags that keep it offline). Screenshots go to
artifacts/e2e/ (gitignored).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from anydressing_run.uiformat import VIRTUAL_NODES
from anydressing_run.workflow_specs import THIRD_PARTY, WORKFLOWS

from e2e_support import ARTIFACTS, OUR_NODES, load_api, load_ui

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
MISSING_DIALOG = "Some Nodes Are Missing"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def page(e2e_server):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"BROWSER TESTS SKIPPED: no chromium at {CHROMIUM} (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 2560, "height": 1440})
        pg.errors = []
        pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
        pg.goto(e2e_server.url)
        pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                             "Object.keys(window.LiteGraph.registered_node_types).length > 100", timeout=90_000)
        pg.wait_for_timeout(1500)
        pg.keyboard.press("Escape")  # the first-run template dialog
        yield pg
        browser.close()


def registered(page) -> set:
    return set(page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))


def load(page, workflow: dict) -> None:
    page.keyboard.press("Escape")
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(800)
    # show the whole graph, above LiteGraph's low-quality zoom threshold (0.6), for the screenshot
    page.evaluate("""() => { const ds = window.app.canvas.ds; ds.scale = 0.62; ds.offset = [30, 300];
                             window.app.canvas.setDirty(true, true); }""")
    page.wait_for_timeout(300)


def missing_dialog_shown(page) -> bool:
    return page.get_by_text(MISSING_DIALOG).count() > 0


def test_anydressing_nodes_in_the_node_library(page, object_info):
    types = registered(page)
    ours = {k for k, v in object_info.items() if v.get("category", "").startswith("AnyDressing")}
    assert set(OUR_NODES) <= ours, ours
    assert ours <= types, f"not registered in the editor: {sorted(ours - types)}"
    categories = page.evaluate("(ids) => ids.map(t => window.LiteGraph.registered_node_types[t].category)",
                               sorted(ours))
    assert all(c.startswith("AnyDressing") for c in categories), categories


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_ui_workflow_loads_in_the_editor(name, page):
    workflow = load_ui(name)
    load(page, workflow)
    wanted = {n["type"] for n in workflow["nodes"]} - VIRTUAL_NODES
    missing = wanted - registered(page)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    if name in THIRD_PARTY:
        assert missing and all(t.startswith("IPAdapter") for t in missing), missing
        assert missing_dialog_shown(page), "the editor should name the missing third-party nodes"
        return
    assert not missing, f"{name}: node types missing in the editor: {sorted(missing)}"
    assert not missing_dialog_shown(page), f"{name}: the editor opened '{MISSING_DIALOG}'"
    count = page.evaluate("() => window.app.graph._nodes.length")
    assert count == len(workflow["nodes"])
    errors = [e for e in page.errors if "AnyDressing" in e]
    assert not errors, errors


@pytest.mark.parametrize("name", [n for n in WORKFLOWS if n not in THIRD_PARTY])
def test_editor_exports_the_api_twin(name, page):
    """What the editor would queue for the UI file is exactly the shipped API file."""
    load(page, load_ui(name))
    exported = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert json.loads(json.dumps(exported)) == load_api(name)


def test_queue_from_the_editor_without_validation_errors(page, client, tiny_files, samples):
    """The multi-garment workflow queued by the editor itself (sizes made tiny in its widgets) runs clean."""
    load(page, load_ui("anydressing_upper_lower_hat"))
    settings = {"EmptyLatentImage": {"width": 64, "height": 64}, "KSampler": {"steps": 2},
                "AnyDressingEncodeGarments": {"width": 64, "height": 64},
                "CheckpointLoaderSimple": {"ckpt_name": tiny_files["checkpoint"].name}}
    page.evaluate("""(settings) => {
        for (const node of window.app.graph._nodes) {
            const values = settings[node.type] || {};
            for (const [name, value] of Object.entries(values)) node.widgets.find(w => w.name === name).value = value;
        }}""", settings)
    before = set(client.get_json("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    assert page.evaluate("() => window.app.lastNodeErrors") in (None, {}), "the editor reported node errors"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = set(client.get_json("/history")) - before
        if new:
            entry = client.history(new.pop())
            if entry["status"].get("completed") or entry["status"].get("status_str") == "error":
                break
        time.sleep(0.5)
    else:
        pytest.fail("the editor's prompt did not finish in 300 s")
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.screenshot(path=str(ARTIFACTS / "queued_from_editor.png"))
