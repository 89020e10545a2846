"""The paper's evaluation metrics (CLIP-T, CLIP-I, CLIP-I*, CLIP-AS) as a library and a command.

    python -m anydressing_core.metrics --clip CLIP_DIR [--aesthetic HEAD.safetensors] --manifest RESULTS.jsonl

See :mod:`.clip`, :mod:`.aesthetic`, :mod:`.regions` and docs/BENCHMARK.md.
"""

from .aesthetic import AestheticHead, load_aesthetic
from .clip import ClipScorer, clip_i_star_from, cosine
from .regions import crop_square, mask_region, pose_region
from .score import score_records

__all__ = ["AestheticHead", "ClipScorer", "clip_i_star_from", "cosine", "crop_square", "load_aesthetic",
           "mask_region", "pose_region", "score_records"]
