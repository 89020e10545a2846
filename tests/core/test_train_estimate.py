"""The memory estimate counts the real modules: the full-size UNets have their published parameter counts."""

import pytest

from anydressing_core.train.estimate import counts, main, memory


@pytest.mark.parametrize("base, unet, layers", [("sd15", 859_520_964, 16), ("sdxl", 2_567_463_684, 70)])
def test_counts_are_those_of_the_released_architectures(base, unet, layers):
    c = counts(base)
    assert c["dressing_net"] == unet and c["da_layers"] == layers
    assert c["text_encoders"] == (123_060_480 if base == "sd15" else 123_060_480 + 694_659_840)
    assert c["trainable"] == c["garments_net_trainable"] + c["gfe_lora"] + c["da"]
    assert c["largest_block"] < c["module"] and c["root_unit"] >= c["gfe_lora"] + c["da"]


def test_fsdp_divides_the_sharded_state_and_adds_the_gathered_units():
    c = counts("sd15")
    ddp, fsdp = memory(c, 8, "ddp"), memory(c, 8, "fsdp")
    key = "trainable weights+grads+AdamW (fp32)"
    assert fsdp[key] == pytest.approx(ddp[key] / 8, abs=0.01) and ddp[key] == pytest.approx(16 * c["trainable"] / 1e9, abs=0.01)
    assert fsdp["total before activations"] < ddp["total before activations"]
    assert main(["--base", "sd15", "--processes", "2"]) == 0
