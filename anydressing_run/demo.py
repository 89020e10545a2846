"""``python -m anydressing_run demo``: the main job on a built-in default, offline.

Draws sample garments (numpy/opencv), starts a headless ComfyUI with this pack, and runs the multi-garment
workflow. With a real SD1.5 checkpoint (``--checkpoint`` or ``$ANYDRESSING_CHECKPOINT``) the picture is a real
dressing result; without one, a TINY RANDOM checkpoint is built (``devtools/tiny_models.py``, ~5 s, cached) so
everything runs end to end, and the picture is then noise by construction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .client import ComfyClient
from .errors import RunnerError
from .graph import load_graph
from .run import Substitutions, run_workflow
from .samples import write_samples
from .server import PACK_DIR, ComfyServer, find_comfyui

TINY_CACHE = Path(os.environ.get("ANYDRESSING_TINY_MODELS", Path.home() / ".cache/anydressing/tiny-models"))
# [choice] the tiny random model runs smaller and shorter: its output is noise whatever the size.
TINY_SIZE, TINY_STEPS, TINY_GARMENT = (192, 256), 6, (128, 192)

NOISE_BANNER = """
=====================================================================================
 No SD1.5 checkpoint configured: the demo uses a TINY RANDOM checkpoint built locally.
 Everything runs for real (loaders, garment encoding, Dressing-Attention, sampling),
 but the PICTURES ARE NOISE. For a real result:
     python -m anydressing_run demo --checkpoint /path/to/sd15.safetensors
 or  export ANYDRESSING_CHECKPOINT=/path/to/sd15.safetensors
=====================================================================================
"""


def add_demo_args(p) -> None:
    p.add_argument("--checkpoint", default=os.environ.get("ANYDRESSING_CHECKPOINT"),
                   help="SD1.5 checkpoint file (env ANYDRESSING_CHECKPOINT); default: a tiny random one (noise)")
    p.add_argument("--output", "-o", default="anydressing_demo", help="folder for inputs and results")
    p.add_argument("--workflow", default="upper_lower_hat", help="shipped workflow to run (default upper_lower_hat)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, help="sampling steps (default: the workflow's 30; 6 on the tiny model)")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--trained", action="store_true",
                   help="first train AnyDressing weights for a few steps on the checkpoint (CPU, minutes), then dress "
                        "with them: trained, strength 0 and plain results side by side (anydressing_run/trained.py); "
                        "--width sets the square image side (default 64), --steps the sampling steps (default 4)")


def build_tiny(comfyui: Path, python: str | None = None) -> Path:
    """Build (or reuse) the tiny random checkpoint in a subprocess that imports ComfyUI; returns its path."""
    cmd = [python or sys.executable, "-m", "devtools.tiny_models", str(TINY_CACHE), "--comfyui", str(comfyui)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PACK_DIR)
    if proc.returncode != 0:
        raise RunnerError("could not build the tiny random checkpoint:\n" + (proc.stderr or proc.stdout)[-3000:],
                          exit_code=4)
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(paths["checkpoint"])


def cmd_demo(ns) -> int:
    if ns.trained:
        from .trained import cmd_trained

        return cmd_trained(ns)
    from .cli import resolve_workflow

    out = Path(ns.output).resolve()
    workflow = resolve_workflow(ns.workflow)
    graph = load_graph(workflow)
    slots = [n["inputs"].get("slot") for n in graph.values() if n["class_type"] == "AnyDressingGarment"]
    if ns.server:
        raise RunnerError("the demo starts its own ComfyUI (it needs the checkpoint and this pack loaded); "
                          "drop --server, or use 'run' against your server")
    comfyui = find_comfyui(ns.comfyui)
    samples = write_samples(out / "inputs", size=384, seed=0)
    print(f"sample inputs: {out / 'inputs'}")
    tiny = not ns.checkpoint
    if tiny:
        print(NOISE_BANNER, file=sys.stderr)
        checkpoint = build_tiny(comfyui)
    else:
        checkpoint = Path(ns.checkpoint).expanduser()
        if not checkpoint.is_file():
            raise RunnerError(f"checkpoint file not found: {checkpoint}")
    from .workflow_specs import GARMENT_FILES

    subs = Substitutions(
        garments=[(slot, samples[GARMENT_FILES[slot]]) for slot in slots],
        images=[(t, samples[f]) for t, f in (("Person photo", "anydressing_person.png"),
                                              ("Clothing mask", "anydressing_person_mask.png"),
                                              ("Subject photo", "anydressing_person.png"),
                                              ("Pose image", "anydressing_pose.png"))
                if any((n.get("_meta") or {}).get("title") == t for n in graph.values())],
        prompt=f"a full-body photo of a person, {samples['caption'].replace('a mannequin ', '')}, studio",
        seed=ns.seed, steps=ns.steps or (TINY_STEPS if tiny else None),
        width=ns.width or (TINY_SIZE[0] if tiny else None), height=ns.height or (TINY_SIZE[1] if tiny else None),
        garment_size=TINY_GARMENT if tiny else None, checkpoint=checkpoint.name)
    with ComfyServer(comfyui, port=ns.port, cpu=ns.cpu,
                     model_folders={"checkpoints": [checkpoint.resolve().parent]}) as srv:
        print(f"ComfyUI started at {srv.url} ({'CPU' if srv.cpu else 'GPU'}); running {workflow.name}")
        written = run_workflow(graph, ComfyClient(srv.url), subs, out, stem="demo", timeout=ns.timeout,
                               progress=not ns.quiet)
    print("results:")
    for p in written:
        print(f"  {p}")
    if tiny:
        print("NOTE: made with the tiny RANDOM checkpoint, so these pictures are noise "
              "(pass --checkpoint for a real result).")
    return 0
