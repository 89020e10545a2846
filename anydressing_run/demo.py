"""``python -m anydressing_run demo``: the main job on a built-in default, offline.

Draws sample garments (numpy/opencv), starts a headless ComfyUI with this pack, and runs the multi-garment
workflow. With a real SD1.5 checkpoint (``--checkpoint`` or ``$ANYDRESSING_CHECKPOINT``) the picture is a real
dressing result; without one, a TINY RANDOM checkpoint is built (``devtools/tiny_models.py``, ~5 s, cached) so
everything runs end to end, and the picture is then noise by construction. Settings follow ``--preset``
(``cpu-preview`` on a machine without a GPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import presets
from .client import ComfyClient
from .errors import RunnerError
from .graph import load_graph, nodes_of, title
from .run import Substitutions, run_workflow
from .samples import write_samples
from .server import ComfyServer, comfyui_python, find_comfyui
from .tiny import NOISE_BANNER, build_tiny
from .trained import cmd_trained
from .workflow_specs import PHOTO_SAMPLES, resolve_workflow

def add_demo_args(p) -> None:
    p.add_argument("--checkpoint", default=os.environ.get("ANYDRESSING_CHECKPOINT"),
                   help="SD1.5 checkpoint file (env ANYDRESSING_CHECKPOINT); default: a tiny random one (noise)")
    p.add_argument("--output", "-o", default="anydressing_demo", help="folder for inputs and results")
    p.add_argument("--workflow", default="upper_lower_hat", help="shipped workflow to run (default upper_lower_hat)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, help="sampling steps (default: the preset's)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    presets.add_arguments(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--trained", action="store_true",
                   help="first train AnyDressing weights for a few steps on the checkpoint (CPU, minutes), then dress "
                        "with them: trained, strength 0 and plain results side by side (anydressing_run/trained.py); "
                        "--width sets the square image side (default 64), --steps the sampling steps (default 4)")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def demo_checkpoint(ns, comfyui: Path) -> tuple:
    """``(checkpoint file, is the tiny random one)``."""
    if not ns.checkpoint:
        say(NOISE_BANNER)
        return build_tiny(comfyui, comfyui_python(comfyui, ns.python)), True
    checkpoint = Path(ns.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise RunnerError(f"checkpoint file not found: {checkpoint}")
    return checkpoint, False


def demo_substitutions(graph: dict, samples: dict, checkpoint: Path, ns) -> Substitutions:
    """The drawn samples in every picture the workflow loads, the sample's caption as the prompt."""
    slots = [graph[n]["inputs"].get("slot") for n in nodes_of(graph, "AnyDressingGarment")]
    photos = {title(graph, n): samples[PHOTO_SAMPLES[title(graph, n)]] for n in nodes_of(graph, "LoadImage")
              if title(graph, n) in PHOTO_SAMPLES}
    return Substitutions(
        garments=[(slot, samples[slot]) for slot in slots], images=sorted(photos.items()),
        prompt=f"a full-body photo of a person, {samples['caption'].replace('a mannequin ', '')}, studio",
        seed=ns.seed, steps=ns.steps, width=ns.width, height=ns.height, checkpoint=checkpoint.name)


def cmd_demo(ns) -> int:
    if ns.trained:
        return cmd_trained(ns)
    if ns.server:
        raise RunnerError("the demo starts its own ComfyUI (it needs the checkpoint and this pack loaded); "
                          "drop --server, or use 'run' against your server")
    out = Path(ns.output).resolve()
    workflow = resolve_workflow(ns.workflow)
    graph = load_graph(workflow)
    comfyui = find_comfyui(ns.comfyui)
    samples = write_samples(out / "inputs", size=384, seed=0)
    say(f"sample inputs: {out / 'inputs'}")
    checkpoint, tiny = demo_checkpoint(ns, comfyui)
    subs = demo_substitutions(graph, samples, checkpoint, ns)
    folders = {"checkpoints": [checkpoint.resolve().parent]}
    with ComfyServer(comfyui, port=ns.port, cpu=ns.cpu, model_folders=folders, python=ns.python) as srv:
        say(f"ComfyUI started at {srv.url} ({'CPU' if srv.cpu else 'GPU'}); running {workflow.name}")
        written = run_workflow(graph, ComfyClient(srv.url), subs, out, stem="demo", timeout=ns.timeout,
                               progress=not ns.quiet, preset=ns.preset, probe=ns.probe, say=say)
    print("results:")
    for p in written:
        print(f"  {p}")
    if tiny:
        print("NOTE: made with the tiny RANDOM checkpoint, so these pictures are noise "
              "(pass --checkpoint for a real result).")
    return 0
