"""Garment features, adapters and GarmentsNet go through ComfyUI's model management, and our attention calls
honour another pack's attention kernel (``optimized_attention_override``) on the dressed layers too."""

from __future__ import annotations

import pytest
import torch

from helpers import Graph, diffusers_unet_from_comfy, make_adapter

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


@pytest.fixture(scope="module")
def g(host, tiny_model_names):
    return Graph(host, tiny_model_names)


def loaded_models(host):
    mm = host.module("nodes.host_api").model_management
    return [loaded.model for loaded in mm.current_loaded_models]


def test_garment_store_is_loaded_with_the_unet_and_freed_with_it(host, g):
    mm = host.module("nodes.host_api").model_management
    patch_mod = host.module("nodes.patch")
    feats = g.features([(RED, "upper"), (BLUE, "lower")])
    patched = g.apply(feats)
    patch = patch_mod.find_patch(patched)
    store = patch.store
    assert isinstance(store.model, patch_mod.GarmentStore)
    assert store in patched.get_nested_additional_models(), "the store is not an additional model of the MODEL"
    # the store's size counts the garment tokens it holds
    assert store.model_size() == sum(t.numel() * t.element_size() for t in feats.tokens.values())
    g.sample(patched)
    assert any(m is store for m in loaded_models(host)), "sampling did not load the garment store"
    mm.unload_all_models()
    assert not any(m is store for m in loaded_models(host)), "unload_all_models left the garment store loaded"
    # and it still works afterwards: the next run loads it again
    again = g.sample(patched)
    assert torch.isfinite(again).all() and any(m is store for m in loaded_models(host))


def test_run_cache_is_empty_after_a_run_and_after_an_interrupt(host, g):
    patch_mod = host.module("nodes.patch")
    mm = host.module("nodes.host_api").model_management
    patched = g.apply(g.features([(RED, "upper")]))
    patch = patch_mod.find_patch(patched)
    g.sample(patched)
    assert patch.state.kv == {} and patch.state.modules is None
    calls = []

    def interrupt_after_first(executor, *args, **kwargs):
        calls.append(1)
        mm.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    probe = patched.clone()
    probe.add_wrapper_with_key(host.module("nodes.host_api").patcher_extension.WrappersMP.APPLY_MODEL, "test",
                               interrupt_after_first)
    with pytest.raises(mm.InterruptProcessingException):
        g.sample(probe)
    mm.interrupt_current_processing(False)
    assert calls and patch.state.kv == {} and patch.state.modules is None and patch.state.depth == 0


def test_adapter_lora_is_managed_by_comfyui(host, g, tmp_path):
    """An adapter with GFE LoRA: its LoRA is a ModelPatcher loaded for the garment pass (built once per adapter)."""
    unet = diffusers_unet_from_comfy(host, g.model)
    adapter, _, _ = make_adapter(host, unet, include_unet=False)
    adapter_side = host.module("nodes.adapter")
    handle = adapter_side.managed_lora(adapter, g.model)
    assert handle is not None and handle is adapter_side.managed_lora(adapter, g.model)
    chain = g.garments([(RED, "upper"), (BLUE, "lower")])
    host.run("AnyDressingEncodeGarments", model=g.model, vae=g.vae, garments=chain, width=64, height=64,
             adapter=adapter)
    assert any(m is handle for m in loaded_models(host)), "the garment pass did not load the adapter's LoRA"


def test_another_packs_attention_override_reaches_the_dressed_layers(host, g):
    """An ``optimized_attention_override`` (SageAttention-style patchers) is used by our DA calls too."""
    seen = []

    def override(func, *args, **kwargs):
        seen.append(args[1].shape[1])  # the key length: image tokens, or image + garment tokens
        return func(*args, **kwargs)

    feats = g.features([(RED, "upper"), (BLUE, "lower")])
    for form in ("joint", "separate"):
        seen.clear()
        patched = g.apply(feats, form=form)
        patched.model_options["transformer_options"]["optimized_attention_override"] = override
        g.sample(patched)
        garment_tokens = feats.tokens[("input", 1, 0)].shape[1] * 2
        assert seen, f"{form}: the override was never called"
        # some calls saw the garment tokens: the dressed attention itself went through the override
        assert any(n >= garment_tokens for n in seen), f"{form}: dressed calls bypassed the override {sorted(set(seen))}"
