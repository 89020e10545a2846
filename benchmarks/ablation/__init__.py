"""The CPU ablation benchmark: a tiny DressingNet/GarmentsNet trained on synthetic data (docs/BENCHMARK.md).

It lives beside the other benchmarks, not in the product: it trains pixel-space toy models to test the
paper's claims, using the pack's own attention, GFE and loss code from ``anydressing_core``.
"""
