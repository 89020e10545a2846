"""The host contract: one test per ComfyUI symbol the pack uses (``nodes/host_contract.py``).

Each test resolves the symbol in the installed ComfyUI, checks that it is callable where the pack calls it and
that its signature accepts the arguments the pack passes.  A ComfyUI release that renames, removes or changes
one of them fails exactly that test, named after the symbol.  The conventions (option keys the hooks read) are
checked by behaviour: a real sampling run of the tiny model with recording hooks.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _load_contract():
    spec = importlib.util.spec_from_file_location("anydressing_host_contract", REPO / "nodes" / "host_contract.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


CONTRACT_MODULE = _load_contract()
CONTRACT = {symbol.name: symbol for symbol in CONTRACT_MODULE.CONTRACT}
CONVENTIONS = dict(CONTRACT_MODULE.CONVENTIONS)


def test_contract_names_are_unique():
    assert len(CONTRACT) == len(CONTRACT_MODULE.CONTRACT)


def resolve(name: str, host, wires: dict):
    """The object a dotted contract name points at, in the installed host."""
    if name.startswith("NODE_API."):
        name = host.module("nodes.host_api").NODE_API + name[len("NODE_API"):]
    parts = name.split(".")
    if parts[0] in wires:
        obj = wires[parts[0]]
        rest = parts[1:]
    else:
        obj, rest = None, parts
        for i in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            rest = parts[i:]
            break
        if obj is None:
            raise AssertionError(f"no module of {name} can be imported")
    for i, attr in enumerate(rest):
        assert hasattr(obj, attr), f"{'.'.join(parts[:len(parts) - len(rest) + i])} has no attribute {attr!r}"
        obj = getattr(obj, attr)
    return obj


@pytest.fixture(scope="module")
def wires(host, tiny_model_names):
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    return {"MODEL": model, "VAE": vae, "CLIP": clip}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_host_symbol(name, host, wires):
    symbol = CONTRACT[name]
    obj = resolve(name, host, wires)
    if not symbol.call:
        return
    assert callable(obj), f"{name} is not callable"
    target = obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        pytest.skip(f"{name}: a builtin without a signature")
    args = [None] * (symbol.args + (1 if symbol.method else 0))
    try:
        signature.bind(*args, **{k: None for k in symbol.kwargs})
    except TypeError as err:
        raise AssertionError(f"{name}{signature} no longer accepts {symbol.args} positional argument(s) and "
                             f"keywords {list(symbol.kwargs)}: {err}") from None


# ------------------------------------------------------------------------------------------- conventions

@pytest.fixture(scope="module")
def recorded(host, tiny_model_names):
    """One 1-step sampling run (CFG) of the tiny model with recording hooks on every option key we rely on."""
    model, clip, vae = host.run("CheckpointLoaderSimple", ckpt_name=tiny_model_names["checkpoint"])
    pos = host.run("CLIPTextEncode", clip=clip, text="a person")[0]
    neg = host.run("CLIPTextEncode", clip=clip, text="")[0]
    seen = {}
    attention = host.module("nodes.host_api").optimized_attention

    def note(kind, extra=None):
        seen.setdefault(kind, []).append(dict(extra) if extra is not None else True)

    def input_patch(kind):
        def patch(n, context, value, extra):
            note(kind, extra)
            return n, context, value
        return patch

    def output_patch(kind):
        def patch(out, extra):
            note(kind, extra)
            return out
        return patch

    def override(func, *args, **kwargs):
        note("extra_options.optimized_attention_override")
        return func(*args, **kwargs)

    def attn1_replace(q, k, v, extra):
        note("transformer_options.patches_replace.attn1", extra)
        # the pack's replaces call the host kernel with transformer_options=extra: the override must fire
        return attention(q, k, v, extra["n_heads"], transformer_options=extra)

    def attn2_replace(q, k, v, extra):
        note("transformer_options.patches_replace.attn2", extra)
        return attention(q, k, v, extra["n_heads"])

    patched = model.clone()
    patches = "transformer_options.patches."
    patched.set_model_attn1_patch(input_patch(patches + "attn1_patch"))
    patched.set_model_attn1_output_patch(output_patch(patches + "attn1_output_patch"))
    patched.set_model_attn2_patch(input_patch(patches + "attn2_patch"))
    patched.set_model_attn2_output_patch(output_patch(patches + "attn2_output_patch"))
    patched.set_model_attn1_replace(attn1_replace, "input", 1, 0)
    patched.set_model_attn2_replace(attn2_replace, "input", 1, 0)
    patched.model_options["transformer_options"]["optimized_attention_override"] = override

    def outer_sample(executor, *args, **kwargs):
        seen.setdefault("outer_sample.args[0]", []).append(tuple(args[0].shape) if torch.is_tensor(args[0]) else None)
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(host.module("nodes.host_api").patcher_extension.WrappersMP.OUTER_SAMPLE, "contract",
                                 outer_sample)
    latent = host.run("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    host.run("KSampler", model=patched, seed=0, steps=1, cfg=6.0, sampler_name="euler", scheduler="normal",
             positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return seen


def _replace_calls(recorded):
    calls = recorded.get("transformer_options.patches_replace.attn1")
    assert calls, "the attn1 replace keyed (input, 1, 0) was never called"
    return calls


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_host_convention(convention, recorded):
    if convention == "outer_sample.args[0]":
        assert recorded.get(convention) == [(1, 4, 8, 8)], f"OUTER_SAMPLE's first argument: {recorded.get(convention)}"
        return
    if convention.startswith("transformer_options.") or convention == "extra_options.optimized_attention_override":
        assert recorded.get(convention), f"the host never called the hook installed under {convention}"
        return
    key = convention.split(".", 1)[1]
    calls = _replace_calls(recorded)
    values = [c.get(key) for c in calls]
    assert all(v is not None for v in values), f"extra_options[{key!r}] missing in an attention call: {values}"
    if key == "block":
        assert all(tuple(v) == ("input", 1) for v in values)
    elif key == "block_index":
        assert all(v == 0 for v in values)
    elif key == "n_heads":
        assert all(isinstance(v, int) and v > 0 for v in values)
    elif key == "cond_or_uncond":
        assert all(set(v) <= {0, 1} for v in values) and any(0 in v for v in values)
    elif key == "sigmas":
        assert all(torch.is_tensor(v) for v in values)
    elif key == "original_shape":
        assert all(list(v)[2:] == [8, 8] for v in values)  # 64x64 pixels -> 8x8 latent
