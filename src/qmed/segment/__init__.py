"""Segmentation: the training loop and its safeguards, budget fitting, validation, prediction (sliding windows, TTA), losses, checkpoints, CRF."""
