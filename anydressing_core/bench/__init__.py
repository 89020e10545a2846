"""The CPU ablation benchmark of issue 6: tiny DressingNet/GarmentsNet on synthetic data (docs/BENCHMARK.md)."""
