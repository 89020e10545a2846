"""Every shipped API workflow runs on a real headless ComfyUI (tiny random models, 64x64, 2 steps)."""

from __future__ import annotations

import copy
import struct

import pytest

from anydressing_run.errors import RunnerError
from anydressing_run.run import Substitutions, run_workflow
from anydressing_run.workflow_specs import SAMPLE_FILES, THIRD_PARTY, WORKFLOWS, sample

from e2e_support import RUNNABLE, WORKFLOWS_DIR, load_api, quick_substitutions

pytestmark = pytest.mark.slow


def png_size(path) -> tuple:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_shipped_files_match_the_specs():
    """One UI file and one API twin per workflow, nothing else (a stray file would go untested)."""
    ui = {p.stem for p in WORKFLOWS_DIR.glob("*.json")}
    api = {p.stem for p in (WORKFLOWS_DIR / "api").glob("*.json")}
    assert ui == api == set(WORKFLOWS)


@pytest.mark.parametrize("name", RUNNABLE)
def test_api_workflow_runs(name, client, tiny_files, e2e_server, samples, tmp_path):
    """The shipped file as it is, after ``upload-samples``: only model names and sizes are changed (tiny
    models, 64x64, 2 steps); every picture it names must be on the server under that name."""
    graph = load_api(name)
    assert all(graph[n]["inputs"]["image"] in (sample(k) for k in SAMPLE_FILES)
               for n in graph if graph[n]["class_type"] == "LoadImage"), "a LoadImage names no shipped sample"
    written = run_workflow(graph, client, quick_substitutions(tiny_files), tmp_path, stem=name,
                           progress=False)
    names = sorted(p.name for p in written)
    assert names == [f"{name}_attention_maps_00.png", f"{name}_result_00.png"], names
    result = tmp_path / f"{name}_result_00.png"
    assert png_size(result) == (64, 64)
    maps_w, maps_h = png_size(tmp_path / f"{name}_attention_maps_00.png")
    n_garments = sum(n["class_type"] == "AnyDressingGarment" for n in graph.values())
    assert maps_h >= 160 * n_garments and maps_w >= 160 * 2, "one row (thumbnail + map) per garment expected"
    saved = list((e2e_server.base_directory / "output" / "AnyDressing").glob("*.png"))
    assert saved, "the server's SaveImage wrote nothing into its output folder"
    assert not list(tmp_path.glob(".*.part")), "a partial file was left behind"


@pytest.mark.parametrize("name", sorted(THIRD_PARTY))
def test_third_party_workflow_names_its_pack(name, client, tiny_files, tmp_path):
    """Excluded from runs; on a server without the pack the runner says which pack and writes nothing."""
    graph = load_api(name)
    with pytest.raises(RunnerError) as err:
        run_workflow(graph, client, quick_substitutions(tiny_files), tmp_path, progress=False)
    assert "IPAdapterFaceID" in str(err.value) and THIRD_PARTY[name].split()[0] in str(err.value)
    assert err.value.exit_code == 2
    assert not list(tmp_path.iterdir())


def test_invalid_graph_returns_node_errors(client, tiny_files, tmp_path):
    graph = load_api("anydressing_single_garment")
    apply_id = next(k for k, v in graph.items() if v["class_type"] == "AnyDressingApply")
    graph[apply_id]["inputs"]["strength"] = 50.0  # above the input's max
    with pytest.raises(RunnerError) as err:
        run_workflow(graph, client, quick_substitutions(tiny_files), tmp_path, progress=False)
    body = err.value.body
    assert apply_id in body["node_errors"], body
    assert f"'Apply AnyDressing' (node {apply_id}, AnyDressingApply), input strength: " in str(err.value)
    assert len(str(err.value).splitlines()) == 2, "one header line, then one line per failing node"
    assert not list(tmp_path.iterdir())


def test_failed_execution_writes_nothing(client, tiny_files, tmp_path):
    """The result is saved on the server before the maps node fails: locally, nothing appears."""
    graph = copy.deepcopy(load_api("anydressing_single_garment"))
    apply_id = next(k for k, v in graph.items() if v["class_type"] == "AnyDressingApply")
    graph[apply_id]["inputs"]["end_percent"] = 0.2  # the maps node looks at 0.5: outside the range -> error
    with pytest.raises(RunnerError) as err:
        run_workflow(graph, client, quick_substitutions(tiny_files), tmp_path, progress=False)
    assert err.value.exit_code == 4
    assert "AnyDressingAttentionMaps" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_garment_substitution_changes_the_result(client, tiny_files, samples, tmp_path):
    """--garment really replaces the picture: another top gives another sample (same seed)."""
    graph = load_api("anydressing_single_garment")
    runs = []
    for i, picture in enumerate([samples["upper"], samples["hat"]]):
        subs = quick_substitutions(tiny_files, garments=[("upper", picture)])
        out = tmp_path / str(i)
        run_workflow(graph, client, subs, out, stem="g", progress=False)
        runs.append((out / "g_result_00.png").read_bytes())
    assert runs[0] != runs[1]


def test_unknown_slot_is_a_clear_error(client, tiny_files, samples, tmp_path):
    graph = load_api("anydressing_single_garment")
    subs = Substitutions(garments=[("hat", samples["hat"])])
    with pytest.raises(RunnerError, match="garment slots are: upper"):
        run_workflow(graph, client, subs, tmp_path, progress=False)
