"""Performance invariants: behaviour that keeps AnyDressing near its cost floor. Nothing here is timed.

- garment K'/V' are projected once per sampling run (main-model projections), never per step or CFG branch,
  and, with an adapter's trained projections, from those (once per run) and never from the model's own;
- K'/V' are shared by the batch (one row, reused by every step), features are not copied per run or per row;
- features and K'/V' stay in the model's compute dtype;
- the garment attention goes through the host's optimized attention (so --use-sage/xformers/flash apply);
- a second queue run with unchanged garments does not re-encode (ComfyUI's cache, through the real executor);
- a separate GarmentsNet is not requested again for sampling, and the features do not keep it alive, so
  ComfyUI's memory manager can offload or free it after encoding.
"""

from __future__ import annotations

import copy
import gc
import uuid
import weakref

import pytest
import torch

from helpers import Graph

RED, BLUE, GREEN = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9), (0.1, 0.8, 0.2)
TWO = [(RED, "upper"), (BLUE, "lower", "stripes")]


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


@pytest.fixture(scope="module")
def two(g):
    return g.features(TWO)


def _modules(host, model):
    return host.module("nodes.common").attn1_modules(model.model.diffusion_model)


class ProjectionCounter:
    """Forward hooks on every attn1.to_k / to_v that count calls on garment-shaped inputs ``[1, S, C]``."""

    def __init__(self, modules, garment_tokens):
        self.garment_tokens = garment_tokens  # key -> S = N * L
        self.calls = {key: 0 for key in modules}
        self.shapes = []
        self.handles = []
        for key, m in modules.items():
            for proj in (m.to_k, m.to_v):
                self.handles.append(proj.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(module, args, out):
            x = args[0]
            self.shapes.append(tuple(x.shape))
            if x.shape[0] == 1 and x.shape[1] == self.garment_tokens[key]:
                self.calls[key] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def test_kv_projected_once_per_run_not_per_step_or_cfg_branch(host, g, two):
    modules = _modules(host, g.model)
    s = {k: int(t.shape[0] * t.shape[1]) for k, t in two.tokens.items()}
    for cfg_policy in ("garments in positive only (paper)", "garments in both"):
        patched = g.apply(two, form="joint", cfg_policy=cfg_policy)
        counter = ProjectionCounter(modules, s)
        try:
            for steps in (1, 3):
                before = dict(counter.calls)
                g.sample(patched, steps=steps, cfg=6.0)
                per_run = {k: counter.calls[k] - before[k] for k in modules}
                # one to_k and one to_v call per layer per run, whatever the steps and CFG branches
                assert per_run == {k: 2 for k in modules}, (cfg_policy, steps, per_run)
        finally:
            counter.close()


def test_trained_projections_are_used_once_per_run_and_never_the_models(host, g, two):
    """Features carrying an adapter's Wk'/Wv': K'/V' come from them, once per layer and run (never per step),
    and the sampling model's own to_k/to_v never see the garment tokens."""
    features_mod = host.module("anydressing_core.features")
    gfe = host.module("anydressing_core.gfe")
    modules = _modules(host, g.model)
    projections = gfe.DAProjections({k: (m.to_k.weight.float(), m.to_v.weight.float()) for k, m in modules.items()})
    feats = features_mod.GarmentFeatures(tokens=two.tokens, garments=two.garments, projections=projections,
                                         form="separate")
    calls = []
    real_kv = projections.kv

    def counting_kv(key, f):
        calls.append(key)
        return real_kv(key, f)

    projections.kv = counting_kv
    counter = ProjectionCounter(modules, {k: int(t.shape[0] * t.shape[1]) for k, t in two.tokens.items()})
    try:
        out = g.sample(g.apply(feats, form="separate"), steps=2)
    finally:
        counter.close()
    assert sum(counter.calls.values()) == 0, counter.calls
    assert sorted(calls) == sorted(modules), "trained K'/V' were not projected exactly once per layer in the run"
    # the same weights as the model's own projections: the same result as zero-shot, to float rounding
    torch.testing.assert_close(out, g.sample(g.apply(two, form="separate"), steps=2), rtol=1e-4, atol=1e-4)


def test_kv_shared_by_the_batch_and_reused_by_every_step(host, g, two):
    patched = g.apply(two, form="joint")
    shared = host.module("nodes.patch").find_patch(patched)
    ptr_before = {k: t.data_ptr() for k, t in two.tokens.items()}
    seen = []
    last = list(_modules(host, g.model).values())[-1]
    # to_out runs after every attn1 call (with a replace installed, the module's own forward does not)
    handle = last.to_out.register_forward_hook(lambda *_: seen.append({k: (tuple(a.shape), a.data_ptr(), b.data_ptr())
                                                                for k, (a, b) in shared.state.kv.items()}))
    try:
        latent = host.run("EmptyLatentImage", width=64, height=64, batch_size=3)[0]
        host.run("KSampler", model=patched, seed=0, steps=3, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform",
                 positive=g.pos, negative=g.neg, latent_image=latent, denoise=1.0)
    finally:
        handle.remove()
    assert len(seen) >= 3 and all(s == seen[0] for s in seen), "K'/V' were rebuilt between steps"
    for key, (shape, _, _) in seen[0].items():
        s = two.tokens[key].shape
        assert shape == (1, s[0] * s[1], s[2]), f"{key}: K' {shape} is not one row shared by the batch of 3"
    assert {k: t.data_ptr() for k, t in two.tokens.items()} == ptr_before, "features were copied or replaced"
    assert shared.state.kv == {}, "the per-run cache outlived the run"


def test_attention_modules_found_once_per_unet_and_not_kept_alive(host, g, two):
    """The per-run module map is found once per UNet (walking every module each run cost ~1 ms on tiny models)
    and is held weakly: it neither outlives its UNet nor goes stale for another one."""
    common = host.module("nodes.common")
    patch = host.module("nodes.patch")
    state = patch.RunState()
    dm = g.model.model.diffusion_model
    state.begin(dm)
    first = state.modules
    state.end()
    state.begin(dm)
    assert state.modules is first and set(first) == set(common.attn1_modules(dm))
    state.end()
    other = copy.deepcopy(dm)
    state.begin(other)
    assert all(state.modules[k] is not first[k] for k in first), "another UNet got the first one's modules"
    state.end()
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None and len(state._modules_of) == 1, "the cached map kept a freed UNet alive"


def test_garment_pass_stops_after_the_last_recorded_layer(host, g, monkeypatch):
    """Encode Garments stops the GarmentsNet pass once every self-attention input is recorded: the output
    blocks' tail and the output conv never run, and the features equal those of a full pass."""
    encode = host.module("nodes.encode")
    dm = g.model.model.diffusion_model
    ran = []
    handle = dm.out.register_forward_hook(lambda *_: ran.append(1))
    try:
        early = g.features(TWO)
        assert ran == [], "the output conv ran: the garment pass did not stop after the last recorded layer"
        real_init = encode.FeatureRecorder.__init__

        def never_complete(self, keys, pbar=None):
            real_init(self, keys, pbar)
            self.keys = set(self.keys) | {("never", 0, 0)}

        monkeypatch.setattr(encode.FeatureRecorder, "__init__", never_complete)
        full = g.features(TWO)
        assert ran == [1], "the comparison pass should have run to the end"
    finally:
        handle.remove()
    assert early.tokens.keys() == full.tokens.keys()
    for key in early.tokens:
        assert torch.equal(early.tokens[key], full.tokens[key]), key


@pytest.mark.parametrize("form", ["separate", "joint"])
def test_bias_and_weight_tensors_built_once_per_layer_and_run(host, g, two, form, monkeypatch):
    """Per layer call the patch builds no bias rows or weight scales: they are made once per token count per
    run (3 steps, CFG, several layers per level: still one build per level), and the cache dies with the run."""
    attention = host.module("anydressing_core.attention")
    real = attention._settings_tensors
    built = []

    def counting(*args, **kwargs):
        built.append(args[1])  # the layer's own token count
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "_settings_tensors", counting)
    patched = g.apply(two, form=form)
    shared = host.module("nodes.patch").find_patch(patched)
    g.sample(patched, steps=3)
    assert shared.calls >= 3 * len(two.tokens)
    levels = {int(t.shape[1]) for t in two.tokens.values()}  # token count L = T of each layer's level
    assert len(two.tokens) > len(levels), "the test model should have several layers per level"
    assert sorted(built) == sorted(levels), f"built for token counts {built}; levels {levels} over 3 steps"
    assert shared.state.settings_tensors == {}, "the per-run cache outlived the run"


@pytest.mark.parametrize("form", ["separate", "joint"])
def test_shared_kv_give_every_batch_row_all_garments(host, g, two, form):
    """Sharing K'/V' across the batch (no copies) must not change any row: a batch of identical rows gives the
    single-row result in every row (a [1, S, C] key read by the host as [B, S/B, C] would split garments)."""
    patched = g.apply(two, form=form, cfg_policy="garments in both")
    key = ("input", 1, 0)
    fn = patched.model_options["transformer_options"]["patches_replace"]["attn1"][key]
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 64, 320, generator=gen) for _ in range(3))
    fn.patch.state.begin(g.model.model.diffusion_model)
    try:
        def call(b):
            extra = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": [0], "sigmas": torch.tensor([1.0]),
                     "original_shape": [b, 4, 8, 8]}
            return fn(q.expand(b, -1, -1), k.expand(b, -1, -1), v.expand(b, -1, -1), extra)
        one, three = call(1), call(3)
    finally:
        fn.patch.state.end()
    for row in range(3):
        torch.testing.assert_close(three[row:row + 1], one, rtol=1e-5, atol=1e-6)


def test_features_and_kv_in_the_model_compute_dtype(host, g, tiny_models):
    import comfy.sd

    common = host.module("nodes.common")
    patch = host.module("nodes.patch")
    bf16 = comfy.sd.load_checkpoint_guess_config(str(tiny_models["checkpoint"]), output_vae=False, output_clip=False,
                                                 model_options={"dtype": torch.bfloat16})[0]
    for model in (g.model, bf16):
        dtype = common.compute_dtype(model)
        feats = g.features(TWO, model=model)
        assert {t.dtype for t in feats.tokens.values()} == {dtype}, f"features not in compute dtype {dtype}"
        patched = g.apply(feats, model=model, form="joint")
        shared = patch.find_patch(patched)
        seen = []
        handles = [m.register_forward_hook(lambda m_, a, o: seen.append(
            (o.dtype, {kv.dtype for pair in shared.state.kv.values() for kv in pair})))
            for m in (mod.to_out for mod in _modules(host, model).values())]
        try:
            g.sample(patched, steps=1)
        finally:
            for h in handles:
                h.remove()
        assert seen, "no self-attention ran"
        for out_dtype, kv_dtypes in seen:
            assert kv_dtypes == {out_dtype}, f"K'/V' in {kv_dtypes}, attention computes in {out_dtype}"


def test_garment_attention_goes_through_the_host_optimized_attention(host, g, two):
    """An ``optimized_attention_override`` (what ComfyUI's attention backends hook) sees the garment tokens."""
    patched = g.apply(two, form="joint")
    lengths = []

    def override(func, q, k, v, heads, *args, **kwargs):
        lengths.append((q.shape[1], k.shape[1]))
        return func(q, k, v, heads, *args, **kwargs)

    patched.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    g.sample(patched, steps=1)
    extra = {t.shape[0] * t.shape[1] for t in two.tokens.values()}
    assert any(kt - qt in extra for qt, kt in lengths), f"no host attention call over the garment tokens: {lengths}"


class _Server:
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, *args, **kwargs):
        pass

    def queue_updated(self):
        pass


def _prompt(ckpt, colour, seed, text):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": text}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 64, "batch_size": 1, "color": colour}},
        "garment": {"class_type": "AnyDressingGarment", "inputs": {"image": ["img", 0], "slot": "upper", "weight": 1.0}},
        "encode": {"class_type": "AnyDressingEncodeGarments",
                   "inputs": {"model": ["ckpt", 0], "vae": ["ckpt", 2], "garments": ["garment", 0], "width": 64, "height": 64}},
        "apply": {"class_type": "AnyDressingApply",
                  "inputs": {"model": ["ckpt", 0], "features": ["encode", 0], "strength": 0.7, "start_percent": 0.0,
                             "end_percent": 1.0, "form": "auto", "cfg_policy": "garments in positive only (paper)"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["apply", 0], "seed": seed, "steps": 1, "cfg": 6.0, "sampler_name": "ddim",
                              "scheduler": "ddim_uniform", "positive": ["pos", 0], "negative": ["neg", 0],
                              "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }


def test_second_queue_run_with_unchanged_garments_does_not_reencode(host, tiny_model_names, monkeypatch, tmp_path):
    import execution

    monkeypatch.setattr(host.folder_paths, "temp_directory", str(tmp_path))  # PreviewImage writes here
    encode = host.module("nodes.encode")
    counts = {"encode": 0}
    original = encode.encode_garments

    def counting(*args, **kwargs):
        counts["encode"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(encode, "encode_garments", counting)
    executor = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC)
    ckpt = tiny_model_names["checkpoint"]

    def queue(prompt):
        executor.execute(prompt, str(uuid.uuid4()), {}, ["out"])
        assert executor.success, executor.status_messages[-1]

    queue(_prompt(ckpt, 0xCC2222, seed=0, text="a person"))
    assert counts["encode"] == 1
    queue(_prompt(ckpt, 0xCC2222, seed=1, text="another prompt"))  # new seed and text: sampling reruns
    assert counts["encode"] == 1, "unchanged garments were encoded again"
    queue(_prompt(ckpt, 0x2222CC, seed=1, text="another prompt"))  # another garment: must re-encode
    assert counts["encode"] == 2


def test_separate_garments_net_is_not_kept_for_sampling(host, g, tiny_models, monkeypatch):
    """Features hold tensors only; sampling the dressed MODEL never asks to load the GarmentsNet again."""
    import comfy.model_management as mm
    import comfy.sd

    garments_net = comfy.sd.load_checkpoint_guess_config(str(tiny_models["checkpoint"]), output_vae=False,
                                                         output_clip=False)[0]
    feats = g.features(TWO, model=garments_net)
    store = mm.intermediate_device()
    assert all(t.device == torch.device(store) for t in feats.tokens.values()), "features left on the load device"
    patched = g.apply(feats)
    requested = []
    real_load = mm.load_models_gpu

    def spy(models, *args, **kwargs):
        requested.extend(models)
        return real_load(models, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    g.sample(patched, steps=1)
    assert requested, "sampling loaded nothing through the memory manager"
    net_ref = weakref.ref(garments_net.model)
    assert all(m.model is not net_ref() for m in requested), "the GarmentsNet was loaded again for sampling"
    del garments_net
    gc.collect()
    mm.cleanup_models_gc()
    gc.collect()
    assert net_ref() is None, "something (features, patch) still holds the GarmentsNet after encoding"
    assert torch.isfinite(g.sample(patched, steps=1)).all()
