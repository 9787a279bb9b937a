"""Data: folder datasets and fingerprint, batches, augmentation, sampling, synthetic data."""
