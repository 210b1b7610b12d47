"""Benchmarks and the research harness: proxy quality over training seeds, kernels, training cost at full size."""
