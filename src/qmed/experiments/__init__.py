"""Experiments: ablations, the data-efficiency curve, active learning, speed and quality benchmarks, the multi-dataset suite, the demo."""
