"""Convert peer weights (MagicClothing, IMAGDressing) into an AnyDressing safetensors checkpoint.

Usage (from the repo root)::

    python -m anydressing_core.convert magic_clothing_768_vitonhd_joint.safetensors -o mc_joint.safetensors
    python -m anydressing_core.convert garment_extractor.safetensors ip_layer.pth -o mc_stable.safetensors
    python -m anydressing_core.convert IMAGDressing-v1_512.pt -o imagdressing.safetensors --dtype fp16

The layout is recognised from the state-dict keys (never the file names).  Pickled inputs
(``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are read ONLY here, with ``torch.load(weights_only=True)``
so they cannot run code.  The output carries the source's licence in its metadata; all peers'
weights are non-commercial.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

import torch

from .checkpoint import AnyDressingAdapter, read_safetensors, sniff_format
from .errors import AnyDressingError
from .importers import import_state_dicts

DTYPES = {"keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def read_any(path: str):
    """State dict of a safetensors or (weights-only) pickle file."""
    if not os.path.isfile(path):
        raise AnyDressingError(f"no file at {path}")
    if sniff_format(path) == "safetensors":  # by content, never by file name
        return read_safetensors(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and zip errors have many types
        raise AnyDressingError(f"{path} could not be read as a weights-only torch file ({e}); it may be truncated, "
                               "or hold objects other than tensors") from None
    if not isinstance(obj, dict):
        raise AnyDressingError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def convert(inputs: List[str], output: str, dtype: Optional[torch.dtype] = None,
            default_lambda: Optional[float] = None) -> AnyDressingAdapter:
    sds = [read_any(p) for p in inputs]
    adapter = import_state_dicts(sds, source=" + ".join(os.path.basename(p) for p in inputs),
                                 default_lambda=default_lambda)
    tensors = adapter.tensors()
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    from .checkpoint import save_checkpoint

    save_checkpoint(output, tensors, adapter.meta)
    return adapter


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m anydressing_core.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="peer weight files (any order)")
    ap.add_argument("-o", "--output", required=True, help="AnyDressing .safetensors to write")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="keep", help="store tensors in this dtype")
    ap.add_argument("--default-lambda", type=float, default=None, help="strength stored as the default (0..2)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.output.endswith(".safetensors"):
        ap.error("the output must be a .safetensors file")
    try:
        adapter = convert(args.inputs, args.output, DTYPES[args.dtype], args.default_lambda)
    except AnyDressingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {adapter.describe()}")
    print(f"licence: {adapter.meta.licence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
