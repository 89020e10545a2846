"""No network: the pack imports and every node runs in a fresh process where internet sockets are forbidden.

A child Python process forbids ``socket.socket`` for AF_INET/AF_INET6, ``socket.create_connection``,
``socket.getaddrinfo`` and ``socket.gethostbyname`` BEFORE anything is imported (local AF_UNIX socket pairs,
which asyncio's event loop needs, stay allowed), records every attempt with its stack (even one that the
caller would swallow), then imports ComfyUI, loads this pack the way ComfyUI does and runs a whole graph:
CheckpointLoaderSimple (tiny), Garment x2, Encode Garments, Apply, KSampler, Attention Maps and the Loader
(a projections-only file). The test asserts the graph ran and no attempt was recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(r'''
    import json, socket, sys, traceback

    attempts = []

    def record(what):
        attempts.append({"what": what, "stack": traceback.format_stack(limit=12)})
        raise OSError(f"network access is forbidden in this test ({what})")

    class NoInternetSocket(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            fam = socket.AF_INET if family == -1 else family
            if fileno is None and fam in (socket.AF_INET, socket.AF_INET6):
                record(f"socket.socket(family={fam})")
            super().__init__(family, type, proto, fileno)

    socket.socket = NoInternetSocket
    socket.create_connection = lambda *a, **k: record(f"create_connection{a[:1]}")
    socket.getaddrinfo = lambda *a, **k: record(f"getaddrinfo{a[:2]}")
    socket.gethostbyname = lambda *a, **k: record(f"gethostbyname{a[:1]}")

    host_path, repo, ckpt_folder, ckpt_name, weights_folder = sys.argv[1:6]
    sys.path.insert(0, repo)
    from devtools.comfy_host import InProcessHost
    import torch

    host = InProcessHost(host_path)
    host.folder_paths.add_model_folder_path("checkpoints", ckpt_folder)
    M = host.nodes.NODE_CLASS_MAPPINGS
    run = host.run

    model, clip, vae = run("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    pos = run("CLIPTextEncode", clip=clip, text="a person")[0]
    neg = run("CLIPTextEncode", clip=clip, text="")[0]
    img = torch.ones(1, 64, 48, 3)
    img[:, 8:56, 8:40] = torch.tensor([0.9, 0.1, 0.1])
    chain = run("AnyDressingGarment", image=img, slot="upper", weight=1.0)[0]
    chain = run("AnyDressingGarment", image=img.flip(-1), slot="lower", weight=1.0, garments=chain)[0]
    feats = run("AnyDressingEncodeGarments", model=model, vae=vae, garments=chain, width=64, height=64)[0]
    patched = run("AnyDressingApply", model=model, features=feats, strength=0.7, start_percent=0.0, end_percent=1.0,
                  form="auto", cfg_policy="garments in positive only (paper)")[0]
    latent = run("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    out = run("KSampler", model=patched, seed=0, steps=1, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform",
              positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]
    maps = run("AnyDressingAttentionMaps", model=patched, positive=pos, latent=out, at_percent=0.5, seed=0)[1]

    # AnyDressing Loader on a projections-only file written here
    ckpt = host.module("anydressing_core.checkpoint")
    common = host.module("nodes.common")
    layers = common.attn1_modules(model.model.diffusion_model)
    tensors = {}
    for key, module in layers.items():
        s = ".".join(str(x) for x in key)
        tensors[f"da.{s}.to_k"] = torch.eye(module.to_k.in_features)
        tensors[f"da.{s}.to_v"] = torch.eye(module.to_k.in_features)
    ckpt.save_checkpoint(weights_folder + "/w.safetensors", tensors, ckpt.CheckpointMeta(base="sd15", layers=list(layers)))
    host.folder_paths.add_model_folder_path("anydressing", weights_folder)
    gnet, adapter = run("AnyDressingLoader", anydressing_name="w.safetensors", model=model)

    print("RESULT " + json.dumps({"attempts": attempts, "sample": list(out["samples"].shape),
                                  "finite": bool(torch.isfinite(out["samples"]).all()), "maps": list(maps.shape),
                                  "nodes": sorted(k for k in M if k.startswith("AnyDressing"))}))
''')


def test_pack_imports_and_runs_with_the_network_forbidden(host, tiny_models, tmp_path):
    weights = tmp_path / "anydressing"
    weights.mkdir()
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)  # nothing may rely on an offline switch: the sockets themselves are forbidden
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(host.path), str(REPO), str(tiny_models["folder"]), tiny_models["checkpoint"].name,
         str(weights)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["finite"] and result["sample"] == [1, 4, 8, 8] and result["maps"] == [2, 64, 64]
    assert {"AnyDressingGarment", "AnyDressingEncodeGarments", "AnyDressingApply", "AnyDressingAttentionMaps",
            "AnyDressingLoader"} <= set(result["nodes"])
    attempts = result["attempts"]
    assert not attempts, "network access was attempted:\n" + "\n".join(
        a["what"] + "\n" + "".join(a["stack"]) for a in attempts[:3])


def test_the_socket_guard_fires(tmp_path):
    """Control: the same guard catches a plain connection attempt (so an empty list above means something)."""
    guard = CHILD.split("host_path, repo, ckpt_folder")[0]
    probe = guard + textwrap.dedent('''
        try:
            socket.create_connection(("example.com", 80), timeout=1)
        except OSError:
            pass
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            pass
        import asyncio
        asyncio.run(asyncio.sleep(0))  # needs a local socket pair: must stay allowed
        print(len(attempts))
    ''')
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"

