"""Run one API workflow on a ComfyUI server: substitute inputs, upload pictures, queue, follow, save.

Library entry point: ``run_workflow``. Nothing is written to the output folder unless the whole run
succeeded and every picture was downloaded (files appear under their final names only when complete).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .client import ComfyClient, ProgressBar
from .errors import RunnerError
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


def run_workflow(graph: dict, client: ComfyClient, subs: Substitutions, output_dir, stem: str = "anydressing",
                 timeout: float = 3600.0, progress: bool = True) -> list:
    """Substitute, validate, upload, queue, wait and save. Returns the written image paths."""
    check_files(subs)
    client.ping()
    object_info = client.object_info()
    uploaded = {str(p): client.upload_image(p) for p in dict.fromkeys(subs.local_files())}
    final = substitute(graph, subs, uploaded)
    check_nodes(final, object_info)
    check_model_names(final, object_info)
    ws = client.open_ws() if progress else None
    try:
        prompt_id = client.queue(final)
    except BaseException:
        if ws is not None:
            ws.close()
        raise
    log.info("queued prompt %s", prompt_id)
    bar = ProgressBar(final) if progress else None
    try:
        entry = client.wait(prompt_id, final, timeout=timeout, progress=bar, ws=ws)
    except KeyboardInterrupt:
        # stop the server's work too: drop the prompt if still queued, interrupt it if running
        try:
            client.post_json("/queue", {"delete": [prompt_id]})
            client.post_json("/interrupt", {"prompt_id": prompt_id})  # only ours, on a shared server
        except (RunnerError, OSError):
            pass
        raise
    return save_outputs(client, final, entry, Path(output_dir), stem)
