"""Benchmarks (not tests): ``python -m benchmarks.speed`` measures AnyDressing's speed and memory cost."""
