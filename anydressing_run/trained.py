"""``python -m anydressing_run demo --trained``: train AnyDressing weights on the checkpoint you sample with,
then dress with them in a real headless ComfyUI, offline.

1. training data: procedural mannequins (``python -m anydressing_core.synthetic``);
2. a short training run (``python -m anydressing_core.train``, one process) whose ``model.base`` is the
   checkpoint file itself (``--checkpoint``, default the tiny random one); it exports
   ``anydressing.safetensors``;
3. a headless ComfyUI with that checkpoint and the export in its model folders runs one graph three ways:
   with the trained weights, the same at strength 0, and without AnyDressing.  Strength 0 must equal the plain
   graph; the trained result must differ.

Every step is a subprocess (the trainer and ComfyUI each in their own process); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import RunnerError
from .graph import GraphBuilder
from .server import PACK_DIR

#: [choice] a demo-sized run: the tiny random model learns nothing useful; these numbers show the path works.
DEMO_STEPS, DEMO_SIZE, DEMO_COUNT = 12, 64, 100
SLOTS = ("upper", "lower", "hat")


def _env(comfyui: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACK_DIR), os.environ.get("PYTHONPATH")])),
               COMFYUI_PATH=str(comfyui), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list, env: dict, what: str) -> str:
    proc = subprocess.run(cmd, cwd=PACK_DIR, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunnerError(f"{what} failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}", exit_code=4)
    return proc.stdout


def write_data(folder: Path, comfyui: Path, size: int = DEMO_SIZE, count: int = DEMO_COUNT, python=None) -> Path:
    """Synthetic training data (mannequins wearing up to three garments); returns the manifest."""
    _run([python or sys.executable, "-m", "anydressing_core.synthetic", "--out", str(folder), "--count", str(count),
          "--size", str(size)], _env(comfyui), "writing the synthetic training data")
    return folder / "train.jsonl"


def train_overrides(checkpoint: Path, manifest: Path, out: Path, steps: int, size: int) -> list:
    """Trainer settings of the demo: the paper's losses at a tiny scale (rank-4 LoRA, batch 2, lr 1e-3 so that a
    few steps move the weights visibly), GTL on every step with random DISTS weights (no VGG16 file needed)."""
    return [f"model.base={checkpoint}", f"model.slots=[{', '.join(SLOTS)}]", "model.lora_rank=4", "model.lora_alpha=4",
            f"dataset.path={manifest}", f"data.height={size}", f"data.width={size}", f"data.garment_height={size}",
            f"data.garment_width={size}", "data.min_crop_fraction=0.001", "loss.dists_random_weights=true",
            "loss.gtl_max_t=1000", "optim.lr=1e-3", f"run.max_steps={steps}", "run.batch_size=2", "run.num_workers=0",
            "run.sample_every=0", f"run.checkpoint_every={steps}", "run.progress=false", f"run.output_dir={out}"]


def train(checkpoint: Path, manifest: Path, out: Path, comfyui: Path, steps: int = DEMO_STEPS, size: int = DEMO_SIZE,
          python=None) -> dict:
    """Run the trainer; returns its result line plus ``seconds`` (wall time) and ``export`` (the file)."""
    start = time.perf_counter()
    stdout = _run([python or sys.executable, "-m", "anydressing_core.train",
                   *train_overrides(checkpoint, manifest, out, steps, size)], _env(comfyui), "training")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RunnerError(f"the trainer printed no result:\n{stdout[-2000:]}", exit_code=4)
    result = json.loads(lines[-1])
    result.update(seconds=time.perf_counter() - start, export=str(out / "anydressing.safetensors"))
    return result


def dressing_graph(checkpoint: str, garments: list, prompt: str, *, adapter: str | None = None, strength: float = 0.7,
                   seed: int = 1, steps: int = 4, size: int = 64, dress: bool = True) -> dict:
    """An API graph: checkpoint -> (AnyDressing Loader -> Encode Garments -> Apply) -> KSampler -> SaveImage.

    ``garments``: ``[(slot, image name in the server's input folder)]``.  ``adapter``: a file in
    models/anydressing (None: zero-shot, the checkpoint's own UNet encodes the garments).  ``dress=False``:
    the plain graph, without AnyDressing nodes.
    """
    builder = GraphBuilder()
    ckpt = builder.add("CheckpointLoaderSimple", "Checkpoint", ckpt_name=checkpoint)
    model = ckpt[0]
    if dress:
        encoder, extra = model, {}
        if adapter:
            loader = builder.add("AnyDressingLoader", "AnyDressing weights", anydressing_name=adapter, model=model)
            encoder, extra = loader[0], {"adapter": loader[1]}
        chain = None
        for slot, image in garments:
            picture = builder.add("LoadImage", f"Garment image: {slot}", image=image)
            kw = {"garments": chain} if chain is not None else {}
            chain = builder.add("AnyDressingGarment", f"Garment: {slot}", image=picture[0], slot=slot, weight=1.0,
                          mask_mode="white is garment", **kw)[0]
        feats = builder.add("AnyDressingEncodeGarments", "Encode Garments", model=encoder, vae=ckpt[2], garments=chain,
                      width=size, height=size, **extra)
        model = builder.add("AnyDressingApply", "Apply AnyDressing", model=model, features=feats[0], strength=strength,
                      start_percent=0.0, end_percent=1.0, form="separate",
                      cfg_policy="garments in positive only (paper)", **extra)[0]
    pos = builder.add("CLIPTextEncode", "Positive prompt", text=prompt, clip=ckpt[1])
    neg = builder.add("CLIPTextEncode", "Negative prompt", text="", clip=ckpt[1])
    latent = builder.add("EmptyLatentImage", "Output size", width=size, height=size, batch_size=1)
    sample = builder.add("KSampler", "Sampler", model=model, seed=seed, steps=steps, cfg=6.0, sampler_name="ddim",
                   scheduler="ddim_uniform", positive=pos[0], negative=neg[0], latent_image=latent[0], denoise=1.0)
    decoded = builder.add("VAEDecode", "Decode", samples=sample[0], vae=ckpt[2])
    builder.add("SaveImage", "Save: result", images=decoded[0], filename_prefix="AnyDressing/trained")
    return builder.graph


def pixel_difference(a: Path, b: Path) -> float:
    """Mean absolute difference of two PNGs' pixels in 0..255 levels (0.0: identical pixels; the files differ
    anyway, SaveImage writes each graph into its PNG)."""
    import cv2
    import numpy as np

    x, y = (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (a, b))
    if x is None or y is None or x.shape != y.shape:
        raise RunnerError(f"cannot compare {a} and {b}: unreadable or of different sizes")
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).mean())


def cmd_trained(ns) -> int:
    from .client import ComfyClient
    from .tiny import NOISE_BANNER, build_tiny
    from .run import Substitutions, run_workflow
    from .samples import write_samples
    from .server import ComfyServer, find_comfyui

    if ns.server:
        raise RunnerError("the demo starts its own ComfyUI (it needs the trained file in its model folders); drop --server")
    comfyui = find_comfyui(ns.comfyui)
    out = Path(ns.output).resolve()
    if ns.checkpoint:
        checkpoint = Path(ns.checkpoint).expanduser().resolve()
        if not checkpoint.is_file():
            raise RunnerError(f"checkpoint file not found: {checkpoint}")
    else:
        print(NOISE_BANNER, file=sys.stderr)
        checkpoint = build_tiny(comfyui)
    size = ns.width or DEMO_SIZE
    print(f"training data: {out / 'data'}")
    manifest = write_data(out / "data", comfyui, size=size)
    print(f"training {DEMO_STEPS} steps on {checkpoint.name} (one CPU process) ...")
    result = train(checkpoint, manifest, out / "run", comfyui, steps=DEMO_STEPS, size=size)
    export = Path(result["export"])
    print(f"trained in {result['seconds']:.1f} s: {export}")
    samples = write_samples(out / "inputs", size=size, seed=0)
    garments = [(slot, samples[slot]) for slot in SLOTS]
    prompt = f"a full-body photo of a person, {samples['caption'].replace('a mannequin ', '')}, studio"
    folders = {"checkpoints": [checkpoint.parent], "anydressing": [export.parent]}
    written = {}
    with ComfyServer(comfyui, port=ns.port, cpu=ns.cpu, model_folders=folders) as srv:
        client = ComfyClient(srv.url)
        runs = {"trained": dict(adapter=export.name), "strength0": dict(adapter=export.name, strength=0.0),
                "plain": dict(dress=False)}
        for name, kw in runs.items():
            graph = dressing_graph(checkpoint.name, [(s, Path(p).name) for s, p in garments], prompt, seed=ns.seed,
                                   steps=ns.steps or 4, size=size, **kw)
            subs = Substitutions(garments=garments) if kw.get("dress", True) else Substitutions()
            written[name] = run_workflow(graph, client, subs, out, stem=f"demo_{name}", timeout=ns.timeout,
                                         progress=not ns.quiet)[0]
    same = pixel_difference(written["strength0"], written["plain"]) == 0.0
    change = pixel_difference(written["trained"], written["strength0"])
    print("results:")
    for name, path in written.items():
        print(f"  {name:10s} {path}")
    print(f"strength 0 equals the plain graph: {same}; the trained weights change the picture by {change:.2f} "
          "levels (mean |difference|, 0..255)")
    if not ns.checkpoint:
        print("NOTE: the tiny RANDOM checkpoint makes noise pictures; pass --checkpoint for a real base.")
    return 0 if same and change > 0 else 4
