"""Command line: ``anydressing-run`` / ``python -m anydressing_run``.

    python -m anydressing_run run WORKFLOW --garment upper=top.png --garment lower=jeans.png \\
        --prompt "a woman in a park" --seed 7 --checkpoint /models/sd15.safetensors --output out/
    python -m anydressing_run demo            # sample garments + multi-garment workflow, no downloads
    python -m anydressing_run list            # the shipped workflows
    python -m anydressing_run upload-samples --server URL   # the pictures the shipped API files name

WORKFLOW is an API-format JSON file or the name of a shipped one (``upper_lower_hat``). Without --server the
runner starts its own headless ComfyUI (with --cpu when no GPU is found) that writes only into a temporary
folder, and stops it afterwards. Before sampling it says the settings it uses (--preset) and the time they
will take. Ctrl-C or SIGTERM takes the run's own prompts off the server (queued or running).
Exit codes: 0 ok, 2 bad input, invalid workflow or a node error before sampling (one line per failing node;
the server's traceback with --verbose), 3 server problem, 4 the run failed later, 130/143 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from . import presets
from .client import ComfyClient
from .demo import add_demo_args, cmd_demo
from .errors import Cancelled, RunnerError
from .graph import load_graph
from .run import Substitutions, check_files, run_workflow
from .samples import upload_samples
from .server import ComfyServer
from .workflow_specs import THIRD_PARTY, WORKFLOWS, resolve_workflow, short_name


def _pair(text: str, flag: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise RunnerError(f"{flag} expects KEY=PATH, got {text!r}")
    return key.strip(), value.strip()


def _size(text: str) -> tuple:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RunnerError(f"--garment-size expects WIDTHxHEIGHT like 384x512, got {text!r}") from None
    return w, h


def _model_arg(value, folder_key: str, folders: dict, started: bool):
    """A model given as a file path: register its folder on a started server and use its file name."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        if not started:
            raise RunnerError(f"{value} is a local file, but --server points at a running ComfyUI that cannot see "
                              "it: pass the name the server lists, or drop --server so the runner starts its own")
        folders.setdefault(folder_key, []).append(path.resolve().parent)
        return path.name
    if path.is_absolute() or value.startswith((".", "~")):
        raise RunnerError(f"model file not found: {value}")
    # otherwise a name as the server lists it (may contain a subfolder); check_model_names validates it
    return value


def add_server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--server", default=os.environ.get("ANYDRESSING_SERVER"),
                   help="URL of a running ComfyUI (default: start a headless one; env ANYDRESSING_SERVER)")
    g.add_argument("--comfyui", help="ComfyUI folder for the started server (default: $COMFYUI_PATH or ~/ComfyUI)")
    g.add_argument("--port", type=int, help="port of the started server (default: a free one)")
    g.add_argument("--python", help="ComfyUI's Python for the started server (default: $COMFYUI_PYTHON, the "
                                    "portable build's python_embeded, a venv inside the ComfyUI folder, or this "
                                    "Python)")
    dev = g.add_mutually_exclusive_group()
    dev.add_argument("--cpu", dest="cpu", action="store_true", default=None, help="run the started server on the CPU")
    dev.add_argument("--gpu", dest="cpu", action="store_false", help="do not pass --cpu to the started server")
    g.add_argument("--timeout", type=float, help="seconds to wait for the run (default: an hour, or three times "
                                                 "the expected time when that is longer)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--garment", action="append", default=[], metavar="SLOT=PATH",
                   help="garment picture for a slot of the workflow (upper, lower, hat, ...); repeatable")
    p.add_argument("--image", action="append", default=[], metavar="NODE=PATH",
                   help="picture for a LoadImage node by title or id, e.g. 'Person photo=me.png'; repeatable")
    p.add_argument("--prompt", help="positive prompt")
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--width", type=int, help="output width (EmptyLatentImage / photo resize)")
    p.add_argument("--height", type=int, help="output height")
    p.add_argument("--garment-size", help="WIDTHxHEIGHT garments are encoded at (default of the workflow)")
    p.add_argument("--checkpoint", help="SD1.5 checkpoint: a name the server lists, or a file path")
    p.add_argument("--lora", help="LoRA for workflows with a LoRA node: name or file path")
    p.add_argument("--controlnet", help="ControlNet for workflows with one: name or file path")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="set any input; NODE is a node id or title; VALUE is JSON or a plain string")
    p.add_argument("--output", "-o", default="anydressing_outputs", help="folder for the pictures")
    presets.add_arguments(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_substitutions(ns, started: bool, folders: dict) -> Substitutions:
    return Substitutions(
        garments=[_pair(g, "--garment") for g in ns.garment],
        images=[_pair(i, "--image") for i in ns.image],
        prompt=ns.prompt, negative=ns.negative, seed=ns.seed, steps=ns.steps, cfg=ns.cfg, width=ns.width,
        height=ns.height, garment_size=_size(ns.garment_size) if ns.garment_size else None,
        checkpoint=_model_arg(ns.checkpoint, "checkpoints", folders, started),
        lora=_model_arg(ns.lora, "loras", folders, started),
        controlnet=_model_arg(ns.controlnet, "controlnet", folders, started),
        sets=list(ns.set))


def server_context(ns, folders: dict):
    """A running server: the given URL (nullcontext) or a started ComfyServer."""
    if ns.server:
        if ns.port:
            raise RunnerError("--port is for the server the runner starts; with --server put the port in the URL")
        return nullcontext(None)
    return ComfyServer(ns.comfyui, port=ns.port, cpu=ns.cpu, model_folders=folders, python=ns.python)


def cmd_run(ns) -> int:
    path = resolve_workflow(ns.workflow)
    graph = load_graph(path)
    folders = {}
    subs = build_substitutions(ns, started=not ns.server, folders=folders)
    check_files(subs)  # before a server is started
    with server_context(ns, folders) as srv:
        client = ComfyClient(ns.server or srv.url)
        written = run_workflow(graph, client, subs, ns.output, stem=path.stem, timeout=ns.timeout,
                               progress=not ns.quiet, preset=ns.preset, probe=ns.probe, say=say)
    for p in written:
        print(p)
    return 0


def cmd_upload_samples(ns) -> int:
    """The shipped sample pictures into a running server, under the names the shipped workflows use."""
    if not ns.server:
        raise RunnerError("upload-samples needs --server URL (the ComfyUI to post the shipped workflows to)")
    for name, path in upload_samples(ComfyClient(ns.server)).items():
        print(f"{path} -> input/{name}")
    return 0


def cmd_list(ns) -> int:
    for name, (_, description) in WORKFLOWS.items():
        tag = f"  [needs {THIRD_PARTY[name]}]" if name in THIRD_PARTY else ""
        print(f"{short_name(name):26s} {description}{tag}")
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="log what the runner does (the server command line, uploads, prompt ids)")
    p = argparse.ArgumentParser(prog="anydressing-run", description=__doc__.splitlines()[0], parents=[common],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an API workflow", parents=[common])
    run.add_argument("workflow", help="API workflow file, or a shipped name (see 'list')")
    add_run_args(run)
    add_server_args(run)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="dress sample garments with the multi-garment workflow, no downloads",
                          parents=[common])
    add_demo_args(demo)
    add_server_args(demo)
    demo.set_defaults(func=cmd_demo)
    up = sub.add_parser("upload-samples", parents=[common],
                        help="upload the sample pictures the shipped workflows name (workflows/inputs/)")
    up.add_argument("--server", default=os.environ.get("ANYDRESSING_SERVER"), help="URL of a running ComfyUI")
    up.set_defaults(func=cmd_upload_samples)
    lst = sub.add_parser("list", help="list the shipped workflows")
    lst.set_defaults(func=cmd_list)
    return p


def say(message: str) -> None:
    """What the runner tells its user while it works (stdout is kept for the written file paths)."""
    print(message, file=sys.stderr, flush=True)


def _terminate(signum, frame):
    raise Cancelled(signum)


def main(argv=None) -> int:
    ns = parser().parse_args(argv)
    verbose = getattr(ns, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM cancels like Ctrl-C does
    try:
        return ns.func(ns)
    except RunnerError as exc:
        print(f"anydressing-run: error: {exc}", file=sys.stderr)
        if exc.details:
            print("the server's traceback:\n" + exc.details.rstrip() if verbose else
                  "(the server's traceback: run again with --verbose)", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("anydressing-run: cancelled", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
