"""Device and precision are decided here, in one place; nothing else branches on the device."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import time

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """The CPU as speed figures need it named: model, whether it has AVX512-BF16 and AMX, and the ISA cap set on
    oneDNN (``ONEDNN_MAX_CPU_ISA``: an AMX machine capped at ``avx512_core_bf16`` has no AMX, and is its own kind)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).lower()
    amx = "amx_bf16" in flags and (not cap or "amx" in cap or cap == "all")
    return {"model": model.group(1).strip() if model else platform.processor() or "unknown",
            "avx512_bf16": "avx512_bf16" in flags, "amx": amx, "amx_in_hardware": "amx_bf16" in flags,
            "isa_cap": cap or None, "cores": os.cpu_count()}


def cpu_kind() -> str:
    """A short name for results files: vendor, then the bf16 units in use (``intel-amx``, ``amd-avx512bf16``,
    ``intel-avx512bf16-capped`` for an AMX CPU run with oneDNN capped below AMX)."""
    info = cpu_info()
    vendor = "amd" if "AMD" in info["model"] else "intel" if "Intel" in info["model"] else "cpu"
    unit = "amx" if info["amx"] else "avx512bf16" if info["avx512_bf16"] else "fp32"
    return f"{vendor}-{unit}" + ("-capped" if info["amx_in_hardware"] and not info["amx"] else "")


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is slower than fp32."""
    info = cpu_info()
    return info["avx512_bf16"] or info["amx_in_hardware"]


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
    return "bf16" if cpu_has_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


# bf16 is chosen on a CPU only where its matmuls run at least this much faster than fp32 ones. Seen on 2-core
# machines (bench/results/finetune_speed_*.txt, matmul peak): Intel with AMX 2.6x, AMD EPYC Zen 4 3.4x, the same
# Intel with oneDNN capped below AMX 0.56x (there fp32 fine-tunes 1.47x faster than bf16 autocast,
# bench/results/train_ab_intel-avx512bf16-capped_precision=-fp32.txt). The margin keeps the choice stable from run to
# run, so one seed keeps giving one model.
BF16_MIN_SPEEDUP = 1.3


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """bf16 over fp32 matmul throughput on this CPU, measured once per process (about 0.1 s) on a transformer
    layer's shape: the AVX512-BF16 flag alone does not say whether bf16 is faster (it is not under a capped oneDNN)."""
    x, w = torch.randn(2048, 384), torch.randn(384, 1536)

    def best(a, b) -> float:
        torch.matmul(a, b)  # oneDNN builds its kernel on the first call
        times = []
        for _ in range(3):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        return best(x, w) / best(x.bfloat16(), w.bfloat16())


def autocast(device: torch.device, precision: str):
    """Mixed precision: bf16 matmuls with fp32 master weights (bench/finetune_speed.py measures the accuracy cost)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def attention_implementation(device: torch.device) -> str:
    """'eager' on CPU, where PyTorch's fused attention backward is slow for short sequences (bench/finetune_speed.py,
    row tunefuse_sdpa: 1.6x slower); 'sdpa' (fused kernels) on accelerators."""
    return "sdpa" if device.type == "cuda" else "eager"
