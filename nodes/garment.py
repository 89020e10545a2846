"""AnyDressing Garment: one garment picture (+ optional mask) appended to a GARMENTS chain."""

from __future__ import annotations

import torch

from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.garments import MAX_GARMENTS, SLOTS, Garment, GarmentList, normalize_garment
from .common import AnyDressingNode, Garments, check_choice
from .host_api import io

#: Garment weights: 1 = normal, 0 = ignored.
WEIGHT_RANGE = (0.0, 4.0)


class MaskMode:
    WHITE = "white is garment"
    BLACK = "black is garment (LoadImage alpha mask)"
    ALL = [WHITE, BLACK]


def make_garments(image, slot: str, weight: float, mask=None, garments=None, mask_mode: str = MaskMode.WHITE):
    """The chain ``garments`` plus one normalised :class:`Garment` per picture of ``image [B, H, W, C]``."""
    if garments is not None and not isinstance(garments, GarmentList):
        raise AnyDressingError(f"'garments' must come from another AnyDressing Garment node (got {type(garments).__name__})")
    check_choice(slot, SLOTS, "slot")
    check_choice(mask_mode, MaskMode.ALL, "mask_mode")
    if getattr(image, "ndim", 0) != 4:
        raise AnyDressingError(f"'image' must be an IMAGE batch [B, H, W, C]; got shape {tuple(getattr(image, 'shape', ()))}")
    if image.shape[0] == 0:
        raise AnyDressingError("'image' is an empty batch (0 pictures); connect a garment picture")
    base = len(garments) if garments is not None else 0
    if base + image.shape[0] > MAX_GARMENTS:  # before preprocessing a large batch
        raise AnyDressingError(
            f"{base} chained garments plus a batch of {image.shape[0]} pictures make {base + image.shape[0]}; at most "
            f"{MAX_GARMENTS} garments are supported. Pass fewer pictures or remove garments from the chain.")
    # uint8 pictures stay uint8 (the core scales them); anything else becomes float32 0..1
    pictures = image.detach().cpu()
    pictures = (pictures if pictures.dtype == torch.uint8 else pictures.float()).numpy()
    masks = None
    if mask is not None:
        masks = mask.detach().float().cpu().numpy()
        if masks.ndim == 2:
            masks = masks[None]
        if mask_mode == MaskMode.BLACK:
            masks = 1.0 - masks
        if masks.shape[0] not in (1, pictures.shape[0]):
            raise AnyDressingError(f"{masks.shape[0]} masks for {pictures.shape[0]} garment images; give one mask or one per image")
    new = []
    for i in range(pictures.shape[0]):
        name = f"{base + i + 1}:{slot}"
        picture_mask = None if masks is None else masks[min(i, masks.shape[0] - 1)]
        # checked, masked and cropped once, now, before any model work
        rgb, m = normalize_garment(pictures[i], picture_mask, label=f"garment {base + i + 1} ({slot})")
        new.append(Garment(image=rgb, slot=slot, weight=float(weight), mask=m, name=name))
    return (garments or GarmentList()).appended(new)


class AnyDressingGarment(AnyDressingNode):
    node_id = "AnyDressingGarment"
    title = "AnyDressing Garment"
    about = ("Adds one garment (T-shirt, jeans, hat, ...) to the list AnyDressing dresses the person in. Chain several "
             f"of these nodes through 'garments' for up to {MAX_GARMENTS} garments. A batch of images adds one garment "
             "per image.")
    inputs = [
        io.Image.Input("image", tooltip="The garment picture (in-shop photo or flat lay). A plain background is cut "
                                        "away automatically when no mask is connected."),
        io.Combo.Input("slot", options=list(SLOTS), default="upper",
                       tooltip="What kind of garment this is. Trained AnyDressing weights use a garment-specific "
                               "extractor per slot; zero-shot uses it for labels."),
        io.Float.Input("weight", default=1.0, min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1], step=0.05,
                       tooltip="How strongly this garment is transferred relative to the others (1 = normal, "
                               "0 = ignored)."),
        io.Mask.Input("mask", optional=True,
                      tooltip="Optional garment mask on the garment picture. Leave unconnected for an automatic mask "
                              "(plain backgrounds) or the picture's transparency."),
        Garments.Input("garments", optional=True,
                       tooltip="Garments added by earlier AnyDressing Garment nodes; this one is appended."),
        io.Combo.Input("mask_mode", options=MaskMode.ALL, default=MaskMode.WHITE, optional=True,
                       tooltip="How to read the mask. LoadImage's MASK output is white where the picture is "
                               "TRANSPARENT, so choose 'black is garment' for it."),
    ]
    outputs = [Garments.Output("garment_list", display_name="garments",
                               tooltip="The garment list so far; connect to another AnyDressing Garment or to "
                                       "AnyDressing Encode Garments.")]

    @classmethod
    def validate_inputs(cls, slot=None, mask_mode=None):
        return cls.check_widgets(slot=slot, mask_mode=mask_mode)

    @classmethod
    def execute(cls, image, slot, weight, mask=None, garments=None, mask_mode=MaskMode.WHITE) -> io.NodeOutput:
        return io.NodeOutput(make_garments(image, slot, weight, mask, garments, mask_mode))
