"""Device and precision are decided here, in one place; nothing else branches on the device."""
from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a torch device; valid: 'auto', 'cpu', 'cuda', 'cuda:0'") from e


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}; fix: use 'auto' (bf16 where the "
                         "hardware has it) or 'fp32'")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """Mixed precision: bf16 matmuls with fp32 master weights (bench/finetune_speed.py measures the accuracy cost)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def attention_implementation(device: torch.device) -> str:
    """'eager' on CPU, where PyTorch's fused attention backward is slow for short sequences (bench/finetune_speed.py,
    row tunefuse_sdpa: 1.6x slower); 'sdpa' (fused kernels) on accelerators."""
    return "sdpa" if device.type == "cuda" else "eager"
