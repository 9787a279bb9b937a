"""The machine, in one place: device choice, seeding, mixed precision and memory layout.

`pick_device` takes "cpu", "cuda[:N]" or None (CUDA when there is one); `seed_everything` seeds
Python, NumPy and torch together.

CUDA (`train.amp`): bfloat16 autocast on GPUs that have it (compute capability 8.0 and later:
A100, RTX 30xx, H100), float16 with loss scaling on older ones. CPU: bfloat16 autocast
(`train.cpu_bf16`), only where the CPU computes bfloat16 natively (AVX512-BF16 or AMX; oneDNN says
which); elsewhere bfloat16 is emulated and slower than float32, so the option is ignored there.
bfloat16 keeps float32's exponent range, so no loss scaling is needed. Weights stay float32
(autocast only lowers the convolutions and matmuls), so checkpoints and `qmed predict` are unchanged.

Channels-last layout: oneDNN's CPU convolutions and cuDNN's both prefer it; it changes no result.
docs/benchmarks.md section 3b measured bfloat16 and channels-last together (1.91x for the `cpu`
preset's step), not channels-last alone.
"""

from __future__ import annotations

import contextlib
import functools
import random

import numpy as np
import torch


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # older builds without the query: assume emulation
        return False


def cuda_has_bf16() -> bool:
    """Whether the GPU computes bfloat16 natively (not emulated)."""
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    except (TypeError, RuntimeError, AssertionError):  # older torch without including_emulation, or no driver
        try:
            return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        except (RuntimeError, AssertionError):
            return False


def autocast_dtype(device: torch.device, amp: bool, cpu_bf16: bool) -> torch.dtype | None:
    """The autocast dtype for a training step on `device`, or None for plain float32."""
    if device.type == "cuda" and amp:
        return torch.bfloat16 if cuda_has_bf16() else torch.float16
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Context for the forward pass; a no-op when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
