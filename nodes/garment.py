"""AnyDressingGarment: one garment picture (+ optional mask) appended to a GARMENTS chain."""

from __future__ import annotations

import numpy as np
import torch

from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.garments import MAX_GARMENTS, SLOTS, Garment, GarmentList, fit_mask, to_rgb_alpha
from .common import CATEGORY, GARMENTS


class MaskMode:
    WHITE = "white is garment"
    BLACK = "black is garment (LoadImage alpha mask)"
    ALL = [WHITE, BLACK]


class AnyDressingGarment:
    DESCRIPTION = (
        "Adds one garment (T-shirt, jeans, hat, ...) to the list AnyDressing dresses the person in. Chain several of "
        f"these nodes through 'garments' for up to {MAX_GARMENTS} garments. A batch of images adds one garment per image."
    )
    CATEGORY = CATEGORY
    FUNCTION = "add"
    RETURN_TYPES = (GARMENTS,)
    RETURN_NAMES = ("garments",)
    OUTPUT_TOOLTIPS = ("The garment list so far; connect to another AnyDressing Garment or to Encode Garments.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The garment picture (in-shop photo or flat lay). A plain background is "
                                               "cut away automatically when no mask is connected."}),
                "slot": (list(SLOTS), {"default": "upper", "tooltip": "What kind of garment this is. Trained AnyDressing "
                                       "weights use a garment-specific extractor per slot; zero-shot uses it for labels."}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05,
                                     "tooltip": "How strongly this garment is transferred relative to the others (1 = normal, 0 = ignored)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional garment mask on the garment picture. Leave unconnected for an automatic "
                                             "mask (plain backgrounds) or the picture's transparency."}),
                "garments": (GARMENTS, {"tooltip": "Garments added by earlier AnyDressing Garment nodes; this one is appended."}),
                "mask_mode": (MaskMode.ALL, {"default": MaskMode.WHITE, "tooltip": "How to read the mask. LoadImage's MASK output "
                                             "is white where the picture is TRANSPARENT, so choose 'black is garment' for it."}),
            },
        }

    def add(self, image, slot, weight, mask=None, garments=None, mask_mode=MaskMode.WHITE):
        if garments is not None and not isinstance(garments, GarmentList):
            raise AnyDressingError(f"'garments' must come from another AnyDressing Garment node (got {type(garments).__name__})")
        if slot not in SLOTS:
            raise AnyDressingError(f"unknown slot {slot!r}; use one of {', '.join(SLOTS)}")
        if mask_mode not in MaskMode.ALL:
            raise AnyDressingError(f"unknown mask_mode {mask_mode!r}; use one of {MaskMode.ALL}")
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
        imgs = image.detach().cpu()
        imgs = (imgs if imgs.dtype == torch.uint8 else imgs.float()).numpy()
        masks = None
        if mask is not None:
            masks = mask.detach().float().cpu().numpy()
            if masks.ndim == 2:
                masks = masks[None]
            if mask_mode == MaskMode.BLACK:
                masks = 1.0 - masks
            if masks.shape[0] not in (1, imgs.shape[0]):
                raise AnyDressingError(f"{masks.shape[0]} masks for {imgs.shape[0]} garment images; give one mask or one per image")
        new = []
        for i in range(imgs.shape[0]):
            rgb, alpha = to_rgb_alpha(imgs[i])  # validates mode and size now, before any model work
            m = None
            if masks is not None:
                m = fit_mask(masks[min(i, masks.shape[0] - 1)], rgb.shape[:2])
                if m.max() <= 0.5:
                    raise AnyDressingError(
                        f"the mask of garment {base + i + 1} ({slot}) is empty. Connect a mask that covers the garment, leave the "
                        "mask unconnected (automatic mask), or, for LoadImage's mask of a picture without transparency, "
                        "disconnect it."
                    )
            elif alpha is not None and alpha.min() < 0.99 and alpha.max() > 0.5:
                m = alpha  # transparency marks the garment; an opaque alpha says nothing
            new.append(Garment(image=rgb, slot=slot, weight=float(weight),
                               mask=None if m is None else np.ascontiguousarray(m), name=f"{base + i + 1}:{slot}"))
        return ((garments or GarmentList()).appended(new),)


NODE_CLASS_MAPPINGS = {"AnyDressingGarment": AnyDressingGarment}
NODE_DISPLAY_NAME_MAPPINGS = {"AnyDressingGarment": "AnyDressing Garment"}
