"""The ablation's settings and the comparisons that test the paper's claims, in one place.

A *world* is a set of generator options (``anydressing_core.synthetic``); a *setting* is one way of
dressing the frozen DressingNet, trained (or not) in one world; a *comparison* pairs two settings
on one score and carries the hypothesis written before the runs (docs/BENCHMARK.md).

To add a row: give :class:`Setting` a field whose default keeps every existing row as it is (as
``regions`` for automatic regions and ``pooling`` for garment-token pooling do), read it in
``train.Dresser`` (training) or ``run._setting_task`` (inference), and append the row to
:data:`SETTINGS`; a comparison in :data:`COMPARISONS` makes it part of a verdict (claim
``measure``: reported with its interval, no verdict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from anydressing_core import losses


@dataclass(frozen=True)
class World:
    """Generator options of one synthetic world (``synthetic.render_sample`` keywords)."""

    swatch: bool = False
    note: str = ""


WORLDS: Dict[str, World] = {
    "shop": World(False, "in-shop pictures show the garment's shape, as in the paper's data"),
    "swatch": World(True, "in-shop pictures are fabric swatches: only slot identity says where a garment goes"),
}


@dataclass(frozen=True)
class Setting:
    """One row of the ablation.

    ``garments``: ``none`` (the pose-only base, no garment), ``zero_shot`` (GarmentsNet = the base,
    K' = Wk, V' = Wv, nothing trained) or ``trained`` (a trainable copy of the base and Wk', Wv').
    ``gfe``: one LoRA set per slot in GarmentsNet.  ``igl``: adds ``lambda1 * L_loc``.  ``gtl``:
    lambda2 of ``L_texture`` (0: off).  Inference only: ``regions`` is a region source of
    ``regions.py`` (``pose``, ``masks``, ...; empty: none), ``pooling`` pools every garment's token
    grid ``pooling x pooling`` in the 16x16 DA layers by the product's budget rule (1: off).
    """

    name: str
    world: str
    garments: str = "trained"
    gfe: bool = False
    igl: bool = False
    gtl: float = 0.0
    regions: str = ""
    pooling: int = 1
    label: str = ""

    @property
    def trained(self) -> bool:
        return self.garments == "trained"


#: [paper, Table 3] the chain base -> +GFE -> +IGL -> +GTL, plus references and the GTL weight sweep
SETTINGS: Tuple[Setting, ...] = (
    Setting("none", "shop", "none", label="pose only, no garments"),
    Setting("zero_shot", "shop", "zero_shot", label="zero-shot (nothing trained)"),
    Setting("zero_shot_pose", "shop", "zero_shot", regions="pose", label="zero-shot, automatic regions from the pose"),
    Setting("zero_shot_masks", "shop", "zero_shot", regions="masks", label="zero-shot, the true masks as regions"),
    Setting("zero_shot_pool2", "shop", "zero_shot", pooling=2, label="zero-shot, garment tokens pooled 2x2"),
    Setting("base", "shop", label="reference net, no GFE"),
    Setting("gfe", "shop", gfe=True, label="+ GFE"),
    Setting("gfe_igl", "shop", gfe=True, igl=True, label="+ GFE + IGL"),
    Setting("gfe_igl_gtl", "shop", gfe=True, igl=True, gtl=losses.LAMBDA_TEXTURE, label="+ GFE + IGL + GTL (0.001)"),
    Setting("gfe_igl_gtl_w0.1", "shop", gfe=True, igl=True, gtl=0.1, label="+ GFE + IGL + GTL (0.1)"),
    Setting("gfe_igl_gtl_w1", "shop", gfe=True, igl=True, gtl=1.0, label="+ GFE + IGL + GTL (1)"),
    Setting("swatch_none", "swatch", "none", label="swatches: pose only"),
    Setting("swatch_base", "swatch", label="swatches: reference net, no GFE"),
    Setting("swatch_gfe", "swatch", gfe=True, label="swatches: + GFE"),
    Setting("swatch_gfe_igl", "swatch", gfe=True, igl=True, label="swatches: + GFE + IGL"),
)
BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Comparison:
    """``after - before`` on ``metric``; ``better`` is +1 when higher is better, -1 when lower is.

    ``delta`` is the smallest improvement that counts (fixed before the runs).  ``requires`` names
    another comparison that must be confirmed for this one to be measurable (its condition).
    """

    name: str
    claim: str
    after: str
    before: str
    metric: str
    better: int
    delta: float
    requires: Optional[str] = None
    primary: bool = True


#: written before the runs: docs/BENCHMARK.md, "Hypotheses"
COMPARISONS: Tuple[Comparison, ...] = (
    # conditions: garments get through at all; the reference reproduces texture
    Comparison("garments get through", "condition", "base", "none", "colour_err", -1, 2.0),
    Comparison("swatch garments get through", "condition", "swatch_base", "swatch_none", "colour_err", -1, 2.0),
    Comparison("texture gets through", "condition", "gfe_igl", "none", "edge_err_tex", -1, 1.0),
    # GFE: only slot identity tells the garments apart
    Comparison("GFE: confusion (swatches)", "GFE", "swatch_gfe", "swatch_base", "confused", -1, 0.03,
               requires="swatch garments get through"),
    Comparison("GFE: colour (swatches)", "GFE", "swatch_gfe", "swatch_base", "colour_err", -1, 2.0,
               requires="swatch garments get through", primary=False),
    Comparison("GFE: confusion (in-shop)", "GFE", "gfe", "base", "confused", -1, 0.03,
               requires="garments get through", primary=False),
    # IGL: localisation learned from slot identity (swatches), and in the paper's chain
    Comparison("IGL: localisation (swatches)", "IGL", "swatch_gfe_igl", "swatch_gfe", "loc_iou", 1, 0.02,
               requires="swatch garments get through"),
    Comparison("IGL: confusion (swatches)", "IGL", "swatch_gfe_igl", "swatch_gfe", "confused", -1, 0.03,
               requires="swatch garments get through", primary=False),
    Comparison("IGL: localisation (in-shop)", "IGL", "gfe_igl", "gfe", "loc_iou", 1, 0.02,
               requires="garments get through", primary=False),
    Comparison("IGL: confusion (in-shop)", "IGL", "gfe_igl", "gfe", "confused", -1, 0.03,
               requires="garments get through", primary=False),
    # GTL: texture on striped and checked garments, at the paper's weight and larger
    Comparison("GTL 0.001: texture", "GTL", "gfe_igl_gtl", "gfe_igl", "edge_err_tex", -1, 1.0,
               requires="texture gets through"),
    Comparison("GTL 0.1: texture", "GTL", "gfe_igl_gtl_w0.1", "gfe_igl", "edge_err_tex", -1, 1.0,
               requires="texture gets through", primary=False),
    Comparison("GTL 1: texture", "GTL", "gfe_igl_gtl_w1", "gfe_igl", "edge_err_tex", -1, 1.0,
               requires="texture gets through", primary=False),
    Comparison("GTL 1: pixel error", "GTL", "gfe_igl_gtl_w1", "gfe_igl", "pixel_err", -1, 1.0,
               requires="texture gets through", primary=False),
    # the reference ability the base learned, alone
    Comparison("training vs zero-shot", "chain", "base", "zero_shot", "colour_err", -1, 2.0, primary=False),
    # the pack's own zero-shot additions: automatic regions (docs/REGIONS.md), the garment-token budget
    Comparison("regions (pose): localisation", "regions", "zero_shot_pose", "zero_shot", "loc_iou", 1, 0.02),
    Comparison("regions (pose): confusion", "regions", "zero_shot_pose", "zero_shot", "confused", -1, 0.03,
               primary=False),
    Comparison("regions (pose) vs true masks: localisation", "measure", "zero_shot_pose", "zero_shot_masks",
               "loc_iou", 1, 0.0, primary=False),
    Comparison("pooling 2x2: colour", "measure", "zero_shot_pool2", "zero_shot", "colour_err", -1, 0.0,
               primary=False),
    Comparison("pooling 2x2: texture", "measure", "zero_shot_pool2", "zero_shot", "edge_err_tex", -1, 0.0,
               primary=False),
    Comparison("pooling 2x2: localisation", "measure", "zero_shot_pool2", "zero_shot", "loc_iou", 1, 0.0,
               primary=False),
)


def select(names: Sequence[str]) -> Tuple[Setting, ...]:
    """Settings by name, in table order; unknown names are a clear error."""
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise ValueError(f"unknown ablation settings {bad}; use some of {list(BY_NAME)}")
    return tuple(s for s in SETTINGS if s.name in set(names))
