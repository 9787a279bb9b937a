"""qmed.runtime: which autocast dtype a training step gets, and that a bf16 CPU step trains."""

import torch

from qmed import runtime as precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_dtype_choice(monkeypatch):
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: False)
    assert precision.autocast_dtype(CUDA, amp=True, cpu_bf16=False) is torch.float16  # with loss scaling
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: True)
    assert precision.autocast_dtype(CUDA, amp=True, cpu_bf16=False) is torch.bfloat16  # A100 and later
    assert precision.autocast_dtype(CUDA, amp=False, cpu_bf16=True) is None  # cpu_bf16 is for the CPU only
    assert precision.autocast_dtype(CPU, amp=True, cpu_bf16=False) is None  # amp alone never lowers CPU math
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.autocast_dtype(CPU, amp=False, cpu_bf16=True) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.autocast_dtype(CPU, amp=True, cpu_bf16=True) is None  # emulated bf16: keep float32


def test_no_dtype_is_a_no_op():
    x = torch.randn(2, 3)
    with precision.autocast(CPU, None):
        assert (x @ x.T).dtype is torch.float32


def test_bf16_autocast_lowers_convolutions_only():
    conv = torch.nn.Conv2d(3, 4, 3)
    with precision.autocast(CPU, torch.bfloat16):
        y = conv(precision.channels_last(torch.randn(1, 3, 8, 8)))
    assert y.dtype is torch.bfloat16 and conv.weight.dtype is torch.float32  # weights stay float32


def test_channels_last_only_touches_4d():
    x = torch.randn(2, 3, 4, 5)
    assert precision.channels_last(x).is_contiguous(memory_format=torch.channels_last)
    v = torch.randn(3, 4)
    assert precision.channels_last(v) is v
