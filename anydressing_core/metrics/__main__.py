"""``python -m anydressing_core.metrics``: score generated images; or convert an aesthetic head.

    python -m anydressing_core.metrics --clip CLIP_DIR [--aesthetic HEAD.safetensors] --manifest RESULTS.jsonl [--out scores.json]
    python -m anydressing_core.metrics --clip CLIP_DIR --image GEN.png --text "a prompt" --garment G1.png --garment G2.png
    python -m anydressing_core.metrics convert-aesthetic IN.pth OUT.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .aesthetic import convert_pickle, load_aesthetic
from .clip import ClipScorer
from .score import read_manifest, score_records


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert-aesthetic":
        if len(argv) != 3:
            raise SystemExit("usage: python -m anydressing_core.metrics convert-aesthetic IN.pth OUT.safetensors")
        print(json.dumps({"tensors": convert_pickle(argv[1], argv[2]), "out": argv[2]}))
        return 0
    p = argparse.ArgumentParser(prog="python -m anydressing_core.metrics", description=__doc__.split("\n")[0])
    p.add_argument("--clip", required=True, help="local transformers CLIP folder (never downloaded)")
    p.add_argument("--aesthetic", help="local aesthetic head .safetensors (CLIP-AS)")
    p.add_argument("--manifest", help="JSONL of generated images (docs/BENCHMARK.md)")
    p.add_argument("--image", help="one generated image")
    p.add_argument("--text", help="its prompt")
    p.add_argument("--garment", action="append", default=[], help="a garment image (repeat)")
    p.add_argument("--out", help="write the full JSON here")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if bool(a.manifest) == bool(a.image):
        p.error("give either --manifest or --image")
    scorer = ClipScorer.from_path(a.clip, device=a.device)
    head = load_aesthetic(a.aesthetic) if a.aesthetic else None
    if a.manifest:
        records, root = read_manifest(a.manifest), os.path.dirname(os.path.abspath(a.manifest))
    else:
        records = [{"person": os.path.abspath(a.image), "caption": a.text,
                    "garments": [{"image": os.path.abspath(g)} for g in a.garment]}]
        root = "/"
    result = score_records(scorer, records, root, head)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
