"""Proxy ground truth: procedural data, a small SD-shaped teacher, classifier metrics and the demo."""
