"""Faults inside the real host: interrupts during encoding, sampling and maps; 50 runs in a row.

What must hold after an interrupt (comfy.model_management.interrupt_current_processing, what the UI's Cancel
button calls): the exception is ComfyUI's InterruptProcessingException, the input MODEL carries no patch,
recorder or wrapper it did not carry before, the per-run K'/V' cache is empty, no extra model stays loaded, the
interrupt flag is cleared, and the next plain, dressed and encode runs are bit-identical to the ones before.

Faults injected: 4 interrupts (before encoding, mid-encoding, mid-sampling, mid-maps) and one 50-run loop.
"""

from __future__ import annotations

import gc
import logging
import weakref

import psutil
import pytest
import torch

from helpers import Graph, garment_image

log = logging.getLogger(__name__)
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)
SPECS = [(RED, "upper"), (BLUE, "lower", "stripes")]
LOOP_RUNS = 50
WARMUP_RUNS = 5
#: RSS may grow at most this much over the 50 runs after warm-up. A run's garment features are 0.3-0.6 MiB
#: (7 layers x 64 tokens x 320-1280 channels x 1-2 garments, float32, as Encode logs them), so keeping them (or
#: anything larger) for every run would pass 8 MiB; measured growth on the tiny model: 0.1 MiB over 50 runs.
RSS_BOUND_MIB = 8


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


@pytest.fixture(scope="module")
def before(g):
    """Encoded features, a plain and a dressed 1-step sample, made before any fault."""
    feats = g.features(SPECS)
    return {"feats": feats, "plain": g.sample(g.model, steps=2), "dressed": g.sample(g.apply(feats), steps=2)}


def snapshot(g):
    import comfy.model_management as mm

    # garment stores stay loaded after a run like any model (interrupted or not) and go with their MODEL
    return {"options": repr(g.model.model_options), "patches": sorted(g.model.patches),
            "loaded": sorted((type(m.model.model).__name__, id(m.model.model)) for m in mm.current_loaded_models
                             if type(m.model.model).__name__ != "GarmentStore"),
            "interrupted": mm.processing_interrupted()}


def assert_clean_and_identical(g, before, state):
    import comfy.model_management as mm

    assert not mm.processing_interrupted(), "the interrupt flag outlived the interrupted node"
    assert snapshot(g) == state, "the interrupt left something behind in the host"
    again = g.features(SPECS)
    for key, t in before["feats"].tokens.items():
        assert torch.equal(again.tokens[key], t), f"features of {key} changed after the interrupt"
    assert torch.equal(g.sample(g.model, steps=2), before["plain"]), "plain run changed after the interrupt"
    assert torch.equal(g.sample(g.apply(again), steps=2), before["dressed"]), "dressed run changed after the interrupt"


def interrupt_on_call(module, n):
    """A forward pre-hook on ``module`` that presses Cancel at its ``n``-th call."""
    import comfy.model_management as mm

    calls = [0]

    def hook(*_):
        calls[0] += 1
        if calls[0] == n:
            mm.interrupt_current_processing(True)

    return module.register_forward_pre_hook(hook), calls


def test_interrupt_before_encoding(host, g, before):
    import comfy.model_management as mm

    state = snapshot(g)
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        g.features(SPECS)
    assert_clean_and_identical(g, before, state)


def test_interrupt_in_the_middle_of_the_garment_pass(host, g, before):
    """Cancel pressed inside the UNet pass over the garments, at its second self-attention layer (the recorder
    has kept the first layer's features by then)."""
    import comfy.model_management as mm

    state = snapshot(g)
    layers = list(host.module("nodes.common").attn1_modules(g.model.model.diffusion_model).values())
    handle, calls = interrupt_on_call(layers[1], 1)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            g.features(SPECS)
    finally:
        handle.remove()
    assert calls[0] == 1, "the garment pass never reached the block where Cancel was pressed"
    assert_clean_and_identical(g, before, state)


def test_interrupt_during_sampling_leaves_no_patch_or_cache(host, g, before):
    """Cancel pressed at the second of two steps, after the first step filled the K'/V' cache."""
    import comfy.model_management as mm

    patch = host.module("nodes.patch")
    patched = g.apply(before["feats"])
    shared = patch.find_patch(patched)
    patched_options = repr(patched.model_options)
    state = snapshot(g)
    filled = []
    dm = g.model.model.diffusion_model
    handle, calls = interrupt_on_call(dm, 2)
    watch = dm.register_forward_pre_hook(lambda *_: filled.append(len(shared.state.kv)))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            g.sample(patched, steps=2)
    finally:
        handle.remove()
        watch.remove()
    assert calls[0] == 2 and filled[-1] > 0, "the interrupt did not hit a run with a filled K'/V' cache"
    assert shared.state.depth == 0 and shared.state.kv == {} and shared.state.modules is None, \
        "the per-run K'/V' cache outlived the interrupted run"
    assert repr(patched.model_options) == patched_options, "the interrupted run changed the patched MODEL"
    assert torch.equal(g.sample(patched, steps=2), before["dressed"]), "the same patched MODEL now samples differently"
    assert_clean_and_identical(g, before, state)


def test_interrupt_during_attention_maps(host, g, before):
    import comfy.model_management as mm

    patched = g.apply(before["feats"])
    shared = host.module("nodes.patch").find_patch(patched)
    state = snapshot(g)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    handle, _ = interrupt_on_call(g.model.model.diffusion_model, 1)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            host.run("AnyDressingAttentionMaps", model=patched, positive=g.pos, latent=latent, at_percent=0.5, seed=0)
    finally:
        handle.remove()
    assert shared.state.depth == 0 and shared.state.kv == {}
    _, masks = host.run("AnyDressingAttentionMaps", model=patched, positive=g.pos, latent=latent, at_percent=0.5, seed=0)
    assert masks.shape == (2, 64, 64) and torch.isfinite(masks).all()
    assert_clean_and_identical(g, before, state)


def one_run(host, g, i):
    """Garment(s) of a run-dependent colour, size and count -> Encode -> Apply -> 1-step KSampler, 64x64."""
    chain = None
    for j in range(1 + i % 2):
        colour = ((i * 0.13 + j * 0.5) % 1.0, (i * 0.29) % 1.0, 0.5)
        img = garment_image(colour, size=(48 + 16 * (i % 3), 48), pattern=("plain", "stripes", "noise")[i % 3], seed=i)
        chain = host.run("AnyDressingGarment", image=img, slot=("upper", "lower")[j], weight=1.0,
                         **({} if chain is None else {"garments": chain}))[0]
    feats = host.run("AnyDressingEncodeGarments", model=g.model, vae=g.vae, garments=chain, width=64, height=64)[0]
    patched = g.apply(feats, form=("separate", "joint")[i % 2], strength=0.5 + 0.1 * (i % 5))
    out = g.sample(patched, seed=i, steps=1, cfg=1.0)
    assert torch.isfinite(out).all()
    shared = host.module("nodes.patch").find_patch(patched)
    return weakref.ref(feats), weakref.ref(shared), weakref.ref(patched)


@pytest.mark.slow  # ~30 s on 2 idle cores (55 runs of 2 UNet passes each); minutes on a loaded machine
def test_fifty_runs_keep_memory_flat(host, g, before, record_property):
    proc = psutil.Process()
    for i in range(WARMUP_RUNS):
        one_run(host, g, i)
    gc.collect()
    start = proc.memory_info().rss
    refs, rss = [], []
    for i in range(LOOP_RUNS):
        refs.append(one_run(host, g, WARMUP_RUNS + i))
        if i % 10 == 9:
            gc.collect()
            rss.append((proc.memory_info().rss - start) / 2**20)
    gc.collect()
    alive = [i for i, r in enumerate(refs) if any(x() is not None for x in r)]
    assert not alive, f"features / patch / patched MODEL of runs {alive[:5]} are still referenced after their run"
    grown = (proc.memory_info().rss - start) / 2**20
    record_property("rss_growth_mib", round(grown, 2))
    record_property("rss_every_10_runs_mib", [round(x, 2) for x in rss])
    log.info("RSS growth over %d runs: %.1f MiB (every 10 runs: %s)", LOOP_RUNS, grown, rss)
    assert grown < RSS_BOUND_MIB, f"RSS grew {grown:.1f} MiB over {LOOP_RUNS} runs (every 10: {rss})"
    assert torch.equal(g.sample(g.model, steps=2), before["plain"])
