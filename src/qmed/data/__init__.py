"""Data: reading files, folder datasets, augmentation and sampling."""
