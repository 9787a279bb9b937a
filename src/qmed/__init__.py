"""qmed: medical image segmentation and classification when annotations are scarce."""

__version__ = "0.1.0"
