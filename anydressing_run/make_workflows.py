"""Regenerate ``workflows/*.json`` (UI format), ``workflows/api/*.json`` (API format) from workflow_specs, and
the sample pictures they name (``workflows/inputs/anydressing/*.png``).

    python -m anydressing_run.make_workflows [--server URL | --comfyui PATH] [--out workflows]

Node schemas come from a live server's ``/object_info`` (started headless with this pack when no --server is
given), so widget order always matches the nodes as they are. Developer tool; users never need it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from .client import ComfyClient
from .errors import RunnerError
from .server import PACK_DIR, ComfyServer
from .samples import SHIPPED_SEED, SHIPPED_SIZE, write_samples
from .uiformat import EXTRA_SCHEMAS, api_to_ui, complete_widgets
from .workflow_specs import SAMPLES_DIR, SDXL_NOTE, SDXL_WORKFLOWS, THIRD_PARTY, WORKFLOWS

log = logging.getLogger(__name__)

NOTE = """# {title}

{description}

**AnyDressing** (Li et al., CVPR 2025) dresses the generated person in every garment of the
*Garment* chain. Defaults follow the paper: strength (lambda) 0.7, cfg 6, DDIM 30 steps
(sampler `ddim`, scheduler `ddim_uniform`), 576x768.

- Put your SD1.5 checkpoint in the *Checkpoint* node and your garment pictures in the *Garment image* nodes
  (plain background or transparent PNG).
- The pictures named here (`anydressing/...png`) are the pack's samples in `workflows/inputs/anydressing/`:
  upload them into ComfyUI's `input/anydressing/` to run it as it is (see the pack's `workflows/README.md`).
- *Garment attention maps* shows where each garment lands, one colour per garment, with a colour scale.
{extra}"""


def render(name: str, object_info: dict) -> tuple:
    """``(api_graph, ui_workflow)`` of one shipped workflow."""
    build, description = WORKFLOWS[name]
    graph = build()
    missing = sorted({n["class_type"] for n in graph.values()} - set(object_info) - set(EXTRA_SCHEMAS))
    if missing:
        raise RunnerError(f"{name}: node types {missing} are not on the server; is the pack loaded?")
    complete_widgets(graph, object_info)
    extra = ""
    if name in THIRD_PARTY:
        extra = (f"- **Third-party nodes**: this workflow needs {THIRD_PARTY[name]} (install it with the "
                 "ComfyUI Manager) and its FaceID models. AnyDressing itself works without it.\n")
    title = name.replace("anydressing_", "AnyDressing: ").replace("_", " ")
    note = (SDXL_NOTE if name in SDXL_WORKFLOWS else NOTE).format(title=title, description=description, extra=extra)
    return graph, api_to_ui(graph, object_info, note=note)


def write_all(out: Path, object_info: dict) -> list:
    """Both formats of every workflow and the sample pictures they name (``inputs/anydressing/``)."""
    (out / "api").mkdir(parents=True, exist_ok=True)
    samples = write_samples(out / SAMPLES_DIR.relative_to(SAMPLES_DIR.parents[1]), SHIPPED_SIZE, SHIPPED_SEED)
    written = [path for key, path in samples.items() if key != "caption"]
    for name in WORKFLOWS:
        graph, ui = render(name, object_info)
        for path, data in ((out / "api" / f"{name}.json", graph), (out / f"{name}.json", ui)):
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="URL of a running ComfyUI with this pack loaded")
    parser.add_argument("--comfyui", help="ComfyUI folder for a temporary headless server")
    parser.add_argument("--out", default=str(PACK_DIR / "workflows"))
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if ns.server:
            info = ComfyClient(ns.server).object_info()
        else:
            with tempfile.TemporaryDirectory() as base, ComfyServer(ns.comfyui, base_directory=base) as srv:
                info = ComfyClient(srv.url).object_info()
        for path in write_all(Path(ns.out), info):
            print(path)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
