"""Named run settings (``--preset``): output size, steps and garment size, chosen for the server's hardware.

``paper`` is the paper's setting [paper]: 576x768, 30 DDIM steps (garments at 384x512, a [choice]). On a CPU
one such step of SD1.5 takes about a minute (76 s measured on 2 cores), so a first run there would take about
40 minutes. ``cpu-preview`` [choice] keeps the 3:4 shape at half the side length and 12 steps: about a sixth
of the work per step (625 against 2991 GFLOP of a CFG step of SD1.5, ``python -m benchmarks.flops``) and
two fifths of the steps. ``auto`` picks ``cpu-preview`` on a server without a GPU and leaves the workflow's
own values otherwise. Values given on the command line (``--steps``, ``--width`` ...) win over a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import RunnerError


@dataclass(frozen=True)
class Preset:
    name: str
    width: int
    height: int
    steps: int
    garment_size: tuple  # (width, height) Encode Garments works at
    purpose: str


PRESETS = {
    "paper": Preset("paper", 576, 768, 30, (384, 512), "the paper's setting (576x768, 30 DDIM steps)"),
    "cpu-preview": Preset("cpu-preview", 288, 384, 12, (192, 256),
                          "a quick first look on a CPU: half the side length, 12 steps"),
}
AUTO, WORKFLOW = "auto", "workflow"
CHOICES = (AUTO, WORKFLOW, *PRESETS)


def choose(name: str | None, server_on_cpu: bool) -> tuple:
    """``(Preset or None, why)`` for a ``--preset`` value; None means "keep the workflow's own values"."""
    if name in (None, WORKFLOW):
        return None, "the workflow's own settings"
    if name == AUTO:
        if server_on_cpu:
            return PRESETS["cpu-preview"], "auto: the server has no GPU"
        return None, "auto: the server has a GPU, so the workflow's own settings"
    if name not in PRESETS:
        raise RunnerError(f"unknown preset {name!r}; use one of: {', '.join(CHOICES)}")
    return PRESETS[name], "asked for"


def apply(subs, preset: Preset | None):
    """A copy of the Substitutions with the preset's values where the command line left them unset."""
    if preset is None:
        return subs
    return replace(subs, width=subs.width or preset.width, height=subs.height or preset.height,
                   steps=subs.steps or preset.steps, garment_size=subs.garment_size or preset.garment_size)


def add_arguments(p) -> None:
    """``--preset`` and ``--no-probe`` on an argparse parser."""
    p.add_argument("--preset", choices=CHOICES, default=AUTO,
                   help="size and steps: cpu-preview (288x384, 12 steps), paper (576x768, 30 steps), workflow "
                        "(the file's own values); auto (default): cpu-preview on a server without a GPU, else "
                        "the workflow's values. --steps/--width/--height/--garment-size win over it")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip the few-second speed probe that gives the expected time before sampling")
