"""Run one API workflow on a ComfyUI server: substitute inputs, upload pictures, queue, follow, save.

Library entry point: ``run_workflow``. Nothing is written to the output folder unless the whole run
succeeded and every picture was downloaded (files appear under their final names only when complete).
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import presets
from .client import ComfyClient, ProgressBar
from .errors import RunnerError
from .estimate import PROBE_STEPS, Estimate, Measurement, RunShape, duration_s, minutes, run_shape, step_gflop
from .estimate import probe as measure
from .graph import apply_sets, find_node, is_link, nodes_of, set_input, title

log = logging.getLogger(__name__)

IMAGE_LOADERS = ("LoadImage", "LoadImageMask")
KNOWN_THIRD_PARTY = {"IPAdapter": "ComfyUI_IPAdapter_plus (cubiq)", "InsightFace": "ComfyUI_IPAdapter_plus (cubiq)"}


@dataclass
class Substitutions:
    """What the command line changes in a workflow. Paths are local files, uploaded before queueing."""

    garments: list = field(default_factory=list)  # [(slot, path)]
    images: list = field(default_factory=list)  # [(node id or title, path)]
    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    garment_size: tuple | None = None  # (width, height) of Encode Garments
    checkpoint: str | None = None  # a name the server lists
    lora: str | None = None
    controlnet: str | None = None
    sets: list = field(default_factory=list)  # ["node.input=value"]

    def local_files(self) -> list:
        return [Path(p) for _, p in self.garments] + [Path(p) for _, p in self.images]


def check_files(subs: Substitutions) -> None:
    """Fail before any server work when a picture given on the command line does not exist."""
    for what, path in [(f"garment '{s}'", p) for s, p in subs.garments] + [(f"image '{t}'", p) for t, p in subs.images]:
        path = Path(path)
        if not path.is_file():
            raise RunnerError(f"{what}: file not found: {path}")


def _trace_text(graph: dict, link):
    """The CLIPTextEncode behind a conditioning link, followed through nodes with positive/negative pairs
    (output 0 = positive, 1 = negative, like ControlNetApplyAdvanced) or a single ``conditioning`` input."""
    seen = set()
    while is_link(link) and link[0] not in seen:
        seen.add(link[0])
        node = graph[link[0]]
        if node["class_type"] == "CLIPTextEncode":
            return link[0]
        inputs = node["inputs"]
        if "positive" in inputs and "negative" in inputs:
            link = inputs["positive" if link[1] == 0 else "negative"]
        else:
            link = inputs.get("conditioning")
    return None


def _text_node(graph: dict, which: str) -> str:
    for sampler in nodes_of(graph, "KSampler") + nodes_of(graph, "KSamplerAdvanced"):
        found = _trace_text(graph, graph[sampler]["inputs"].get(which))
        if found:
            return found
    for nid in graph:
        if title(graph, nid).lower() == f"{which} prompt":
            return nid
    raise RunnerError(f"this workflow has no {which} prompt (a CLIPTextEncode feeding a KSampler's {which})")


def _garment_loader(graph: dict, slot: str, index: int) -> str:
    garments = [n for n in nodes_of(graph, "AnyDressingGarment") if graph[n]["inputs"].get("slot") == slot]
    if index >= len(garments):
        have = sorted({graph[n]["inputs"].get("slot") for n in nodes_of(graph, "AnyDressingGarment")})
        raise RunnerError(f"this workflow has {len(garments)} '{slot}' garment node(s) but --garment {slot}=... was "
                          f"given {index + 1} time(s); its garment slots are: {', '.join(have) or 'none'}. "
                          "Use a workflow with that slot (e.g. anydressing_upper_lower_hat) or add a Garment node.")
    link = graph[garments[index]]["inputs"].get("image")
    if not is_link(link) or graph[link[0]]["class_type"] not in IMAGE_LOADERS:
        raise RunnerError(f"the '{slot}' Garment node (id {garments[index]}) does not take its image from a "
                          "LoadImage node, so the runner cannot replace it")
    return link[0]


def substitute(graph: dict, subs: Substitutions, uploaded: dict) -> dict:
    """A copy of ``graph`` with the substitutions applied; ``uploaded`` maps local path -> server image name."""
    graph = copy.deepcopy(graph)
    counts = {}
    for slot, path in subs.garments:
        loader = _garment_loader(graph, slot, counts.get(slot, 0))
        counts[slot] = counts.get(slot, 0) + 1
        graph[loader]["inputs"]["image"] = uploaded[str(path)]
    for ref, path in subs.images:
        nid = find_node(graph, ref)
        if graph[nid]["class_type"] not in IMAGE_LOADERS:
            raise RunnerError(f"--image {ref}=...: node {nid} is a {graph[nid]['class_type']}, not a LoadImage")
        graph[nid]["inputs"]["image"] = uploaded[str(path)]
    if subs.prompt is not None:
        set_input(graph, _text_node(graph, "positive"), "text", subs.prompt)
    if subs.negative is not None:
        set_input(graph, _text_node(graph, "negative"), "text", subs.negative)
    for nid, node in graph.items():
        ct, inputs = node["class_type"], node["inputs"]
        if subs.seed is not None:
            for key in ("seed", "noise_seed"):
                if key in inputs and not is_link(inputs[key]):
                    inputs[key] = subs.seed
        if ct in ("KSampler", "KSamplerAdvanced"):
            if subs.steps is not None:
                inputs["steps"] = subs.steps
            if subs.cfg is not None:
                inputs["cfg"] = subs.cfg
        if ct in ("EmptyLatentImage", "ImageScale"):
            if subs.width is not None:
                inputs["width"] = subs.width
            if subs.height is not None:
                inputs["height"] = subs.height
        if ct == "AnyDressingEncodeGarments" and subs.garment_size:
            inputs["width"], inputs["height"] = subs.garment_size
        if ct == "CheckpointLoaderSimple" and subs.checkpoint:
            inputs["ckpt_name"] = subs.checkpoint
        if ct in ("LoraLoader", "LoraLoaderModelOnly") and subs.lora:
            inputs["lora_name"] = subs.lora
        if ct == "ControlNetLoader" and subs.controlnet:
            inputs["control_net_name"] = subs.controlnet
    return apply_sets(graph, subs.sets)


def check_nodes(graph: dict, object_info: dict) -> None:
    """Unknown node types, named with the pack that provides them when known."""
    unknown = {}
    for nid, node in graph.items():
        if node["class_type"] not in object_info:
            unknown.setdefault(node["class_type"], []).append(nid)
    if not unknown:
        return
    lines = []
    for ct, ids in sorted(unknown.items()):
        hint = next((p for key, p in KNOWN_THIRD_PARTY.items() if key in ct), None)
        if ct.startswith("AnyDressing"):
            hint = "this pack (ComfyUI-AnyDressing) is not loaded on that server, or is older than the workflow"
        lines.append(f"  {ct} (node {', '.join(ids)})" + (f": provided by {hint}" if hint else ""))
    raise RunnerError("the server does not know these node types:\n" + "\n".join(lines)
                      + "\nInstall the missing packs on the server, or pick another workflow.")


def check_model_names(graph: dict, object_info: dict) -> None:
    """A model file name the server does not list: say which names it does list."""
    fields = {"CheckpointLoaderSimple": "ckpt_name", "LoraLoader": "lora_name", "ControlNetLoader": "control_net_name"}
    for nid, node in graph.items():
        key = fields.get(node["class_type"])
        if not key or is_link(node["inputs"].get(key)):
            continue
        spec = object_info.get(node["class_type"], {}).get("input", {}).get("required", {}).get(key)
        options = spec[0] if spec and isinstance(spec[0], list) else None
        value = node["inputs"].get(key)
        if options is not None and value not in options:
            listed = ", ".join(options[:20]) or "nothing"
            raise RunnerError(f"node {nid} ({title(graph, nid)}): the server has no {key} {value!r}; it lists: "
                              f"{listed}. Pass the file with --checkpoint/--lora/--controlnet (a path, when the "
                              "runner starts the server) or copy it into ComfyUI's models folder.")


def _label(graph: dict, nid: str) -> str:
    name = title(graph, nid)
    if name.lower().startswith("save:"):
        name = name[5:]
    return "_".join(name.strip().lower().split()) or f"node{nid}"


def _unique(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def save_outputs(client: ComfyClient, graph: dict, entry: dict, output_dir: Path, stem: str) -> list:
    """Download every saved image, then write them all; on any failure none of this run's files remain."""
    pictures = []
    for nid, out in sorted((entry.get("outputs") or {}).items()):
        for i, image in enumerate(out.get("images") or []):
            if image.get("type") != "output":
                continue
            pictures.append((f"{stem}_{_label(graph, nid)}_{i:02d}.png", client.view(image)))
    if not pictures:
        raise RunnerError("the workflow finished but saved no image (no SaveImage node ran)", exit_code=4)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for name, data in pictures:
            final = _unique(output_dir / name)
            tmp = final.with_name(f".{final.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, final)
            written.append(final)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for name, _ in pictures:
            (output_dir / f".{name}.part").unlink(missing_ok=True)
        raise
    return written


def server_on_cpu(stats: dict) -> bool:
    """True when ``/system_stats`` lists only CPU devices."""
    devices = stats.get("devices") or []
    return bool(devices) and all(str(d.get("type", "")).lower() == "cpu" for d in devices)


def describe_settings(shape: RunShape | None, preset, why: str) -> str:
    name = preset.name if preset else "workflow"
    if shape is None:
        return f"settings: {name} ({why})"
    return (f"settings: {name} ({why}): {shape.width}x{shape.height}, {shape.steps} steps, "
            f"{shape.garments} garment(s) at {shape.garment_size[0]}x{shape.garment_size[1]}")


def describe_estimate(estimate: Estimate, measured: Measurement, shape: RunShape) -> str:
    scaled = "" if measured.size == (shape.width, shape.height) else (
        f" at {measured.size[0]}x{measured.size[1]}, scaled by the SD1.5 cost model")
    return (f"expected: about {minutes(estimate.sampling_s)} of sampling ({estimate.seconds_per_step:.2f} s per "
            f"step x {shape.steps} steps, plus one for the attention maps), from a probe on the server (1 against "
            f"{1 + PROBE_STEPS} steps{scaled}); loading and encoding took {measured.setup_s:.0f} s and are not "
            "repeated")


def cpu_advice(shape: RunShape, measured: Measurement | None) -> str | None:
    """On a CPU-only server: a warning when these settings are much more work than the CPU preview."""
    quick = presets.PRESETS["cpu-preview"]
    quick_shape = RunShape(shape.sampler, quick.steps, quick.width, quick.height, shape.garments, quick.garment_size)
    cost = shape.steps * step_gflop(shape.width, shape.height, shape.garments, shape.garment_size)
    quick_cost = quick.steps * step_gflop(quick.width, quick.height, shape.garments, quick.garment_size)
    if cost <= 2 * quick_cost:
        return None
    if measured is None:
        took = "take long here (tens of minutes with SD1.5)"
        quick_took = ""
    else:
        took = f"take about {minutes(measured.estimate(shape).sampling_s)} here"
        quick_took = f" (about {minutes(measured.estimate(quick_shape).sampling_s)})"
    return (f"NOTE: the server has no GPU, and {shape.width}x{shape.height} with {shape.steps} steps will {took}. "
            f"To go faster: --preset cpu-preview{quick_took}, or fewer --steps, or a smaller --width/--height.")


class _OurPrompts:
    """The prompts this run queued, so that a cancel takes exactly those off the server."""

    def __init__(self, client: ComfyClient):
        self.client = client
        self.ids = []

    def track(self, prompt_id: str) -> None:
        self.ids.append(prompt_id)

    def cancel(self) -> list:
        """Cancel every one still queued or running; returns a line per prompt that was."""
        done = []
        for prompt_id in reversed(self.ids):
            try:
                done.append(self.client.cancel(prompt_id))
            except (RunnerError, OSError) as exc:
                done.append(f"prompt {prompt_id}: could not reach the server to cancel it ({exc})")
        return [line for line in done if line]


def run_workflow(graph: dict, client: ComfyClient, subs: Substitutions, output_dir, stem: str = "anydressing",
                 timeout: float | None = 3600.0, progress: bool = True, preset: str | None = None,
                 probe: bool = False, say=log.info) -> list:
    """Substitute, validate, upload, queue, wait and save. Returns the written image paths.

    ``preset``: a name of ``presets.CHOICES`` (None keeps the workflow's values). ``probe``: measure the
    server's speed first and ``say`` the expected time (see ``estimate``). On Ctrl-C / SIGTERM the prompts
    this run queued are removed from the server's queue or interrupted, and the exception goes on; so on any
    other failure, a timeout included. ``timeout`` None: an hour, or three times the expected time."""
    check_files(subs)
    on_cpu = server_on_cpu(client.ping())
    chosen, why = presets.choose(preset, on_cpu)
    subs = presets.apply(subs, chosen)
    object_info = client.object_info()
    uploaded = {str(p): client.upload_image(p) for p in dict.fromkeys(subs.local_files())}
    final = substitute(graph, subs, uploaded)
    check_nodes(final, object_info)
    check_model_names(final, object_info)
    shape = run_shape(final)
    if preset is not None:
        say(describe_settings(shape, chosen, why))
    ours = _OurPrompts(client)
    ws = None
    try:
        measured = None
        if probe and shape is not None and "PreviewAny" in object_info:
            measured = measure(client, final, shape, on_cpu, track=ours.track)
            say(describe_estimate(measured.estimate(shape), measured, shape))
        if on_cpu and shape is not None:
            advice = cpu_advice(shape, measured)
            if advice:
                say(advice)
        ws = client.open_ws() if progress else None
        prompt_id = uuid.uuid4().hex
        ours.track(prompt_id)  # before queueing: a cancel that comes while the request is on its way finds it
        client.queue(final, prompt_id)
        log.info("queued prompt %s", prompt_id)
        bar = ProgressBar(final) if progress else None
        if timeout is None:  # an hour, or three times the expected time when that is longer
            expected = measured.estimate(shape) if measured is not None else None
            timeout = max(3600.0, 3 * (expected.sampling_s + expected.setup_s)) if expected else 3600.0
        entry = client.wait(prompt_id, final, timeout=timeout, progress=bar, ws=ws)
        took = duration_s(entry)
        if measured is not None and took is not None:
            say(f"the server took {minutes(took)} for the run "
                f"(expected about {minutes(measured.estimate(shape).sampling_s)} of sampling)")
    except BaseException:  # Ctrl-C, SIGTERM, a timeout: nothing of this run keeps running on the server
        for line in ours.cancel():
            say(line)
        raise
    finally:
        if ws is not None:
            ws.close()
    return save_outputs(client, final, entry, Path(output_dir), stem)
