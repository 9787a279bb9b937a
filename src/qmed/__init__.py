"""qmed: medical image segmentation and classification when annotations are scarce."""

import warnings

# timm's hrnet module (imported with timm, hence with smp) decorates a class with the deprecated
# torch.jit.interface, and torch >= 2.10 warns about it on every command; the warning is timm's,
# names nothing a user can change, and is silenced here, for that one message only.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
