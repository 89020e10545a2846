"""How long a run will take, said before it samples: a quick probe on the server and a per-step cost model.

The probe queues the workflow's own graph up to its sampler, at a small size and with ``PreviewAny`` as the
only output (it writes no file), three times: the first prompt loads the models and encodes the garments (all
of which ComfyUI keeps cached for the real run), the next two sample 1 and 1 + ``PROBE_STEPS`` steps, and the
difference of their durations (the server's own timestamps) over ``PROBE_STEPS`` is the per-step time at the
probe size, without what every prompt pays once. On a GPU the probe runs at the real size (a step there is
cheap); on a CPU at ``CPU_PROBE_SIZE``, scaled up by the cost model.

Cost model of one CFG step of SD1.5 in GFLOP, with P = (W/8)*(H/8) latent tokens [choice, fitted within 0.5%
to ``python -m benchmarks.flops`` at 64x64 .. 768x1024]: ``5.97 + 0.3314 P + 1.455e-5 P^2`` for the plain
UNet (convolutions grow with P, self-attention with P^2), plus Dressing-Attention's ``4 T S C`` per layer and
dressed row: ``7.30e-6 P N Lg`` for N garments of Lg = (Wg/8)*(Hg/8) tokens each (16 layers, C = 320..1280).
Other checkpoints' UNets scale differently; the estimate says it is one.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from dataclasses import dataclass

from .errors import RunnerError
from .graph import SAMPLERS, nodes_of, upstream

log = logging.getLogger(__name__)

SIZE_NODES = ("EmptyLatentImage", "ImageScale")
PROBE_OUTPUT = "anydressing_probe_output"
PROBE_STEPS = 2
CPU_PROBE_SIZE = (128, 128)


def step_gflop(width: int, height: int, garments: int = 0, garment_size=(384, 512)) -> float:
    """Predicted GFLOP of one CFG step of SD1.5 with AnyDressing at ``width x height`` (see the module doc)."""
    tokens = (width / 8) * (height / 8)
    garment_tokens = (garment_size[0] / 8) * (garment_size[1] / 8)
    return 5.97 + 0.3314 * tokens + 1.455e-5 * tokens ** 2 + 7.30e-6 * tokens * garments * garment_tokens


@dataclass
class RunShape:
    """What the estimate needs to know about a graph: its one sampler and its sizes."""

    sampler: str
    steps: int
    width: int
    height: int
    garments: int
    garment_size: tuple


def run_shape(graph: dict) -> RunShape | None:
    """The graph's sampling shape, or None when it has not exactly one sampler with a known output size."""
    samplers = [n for t in SAMPLERS for n in nodes_of(graph, t)]
    sizes = [graph[n]["inputs"] for t in SIZE_NODES for n in nodes_of(graph, t)]
    if len(samplers) != 1 or not sizes:
        return None
    steps = graph[samplers[0]]["inputs"].get("steps")
    width, height = sizes[0].get("width"), sizes[0].get("height")
    if not all(isinstance(v, int) for v in (steps, width, height)):
        return None
    encode = [graph[n]["inputs"] for n in nodes_of(graph, "AnyDressingEncodeGarments")]
    garment_size = (encode[0].get("width", 384), encode[0].get("height", 512)) if encode else (384, 512)
    return RunShape(samplers[0], steps, width, height, len(nodes_of(graph, "AnyDressingGarment")), garment_size)


def probe_graph(graph: dict, shape: RunShape, size: tuple, steps: int, seed_offset: int) -> dict:
    """The graph up to its sampler at ``size`` with ``steps`` steps, ending in a PreviewAny of the latent.

    Node ids and every input above the size nodes stay as they are, so ComfyUI's cache serves the models,
    text and garment encodings of a probe to the real run."""
    keep = upstream(graph, shape.sampler)
    probe = {nid: copy.deepcopy(graph[nid]) for nid in keep}
    for node in probe.values():
        if node["class_type"] in SIZE_NODES:
            node["inputs"]["width"], node["inputs"]["height"] = size
    inputs = probe[shape.sampler]["inputs"]
    inputs["steps"] = steps
    for key in ("seed", "noise_seed"):
        if isinstance(inputs.get(key), int):
            inputs[key] = (inputs[key] + seed_offset) % (2 ** 63)
    probe[PROBE_OUTPUT] = {"class_type": "PreviewAny", "inputs": {"source": [shape.sampler, 0]},
                           "_meta": {"title": "AnyDressing time probe"}}
    return probe


def duration_s(entry: dict) -> float | None:
    """Seconds between the server's execution_start and execution_success messages of a history entry."""
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])}
    if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
        return None
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


@dataclass
class Estimate:
    seconds_per_step: float
    steps: int
    setup_s: float  # model loading, text and garment encoding (paid once; cached for later runs)

    @property
    def sampling_s(self) -> float:
        # the attention-maps picture samples one more (single-branch) step at the output size
        return self.seconds_per_step * (self.steps + 1)


@dataclass
class Measurement:
    """The probe's result: seconds per step at ``size`` on this server, with this graph's garments."""

    seconds_per_step: float
    size: tuple
    setup_s: float

    def estimate(self, shape: RunShape) -> Estimate:
        """This server's time for ``shape``: the measured step, scaled by the cost model when sizes differ."""
        ratio = (step_gflop(shape.width, shape.height, shape.garments, shape.garment_size)
                 / step_gflop(*self.size, shape.garments, shape.garment_size))
        return Estimate(self.seconds_per_step * ratio, shape.steps, self.setup_s)


def probe_size(shape: RunShape, on_cpu: bool) -> tuple:
    if not on_cpu:
        return shape.width, shape.height
    return min(shape.width, CPU_PROBE_SIZE[0]), min(shape.height, CPU_PROBE_SIZE[1])


def probe(client, graph: dict, shape: RunShape, on_cpu: bool, track=None) -> Measurement:
    """Measure the server's per-step time for ``graph`` (three small prompts, see the module doc).

    ``track(prompt_id)`` is told each queued probe, so that a cancel can take it off the server."""
    size = probe_size(shape, on_cpu)
    started = time.monotonic()
    durations = []
    for offset, steps in enumerate((1, 1, 1 + PROBE_STEPS), start=1):
        graph_now = probe_graph(graph, shape, size, steps, offset)
        prompt_id = uuid.uuid4().hex
        if track:
            track(prompt_id)
        client.queue(graph_now, prompt_id)
        took = duration_s(client.wait(prompt_id, graph_now, timeout=3600.0))
        if took is None:
            raise RunnerError("the server did not report the time probe's timing; run with --no-probe", exit_code=4)
        durations.append(took)
    warm, one, more = durations
    # the difference of two warm prompts cancels what every prompt pays once (patching, K'/V', setup)
    per_step = (more - one) / PROBE_STEPS if more > one else more / (1 + PROBE_STEPS)
    log.info("time probe at %dx%d: %.3f s per step, %.1f s in all", *size, per_step, time.monotonic() - started)
    return Measurement(per_step, size, max(warm - one, 0.0))


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
