"""The CPU line every speed bench prints in its header (speed figures mean little without the machine's name)."""
from __future__ import annotations

from tunefuse.device import cpu_info, cpu_kind

__all__ = ["cpu_kind", "cpu_summary", "cpu_flags"]


def cpu_summary() -> str:
    info = cpu_info()
    cap = f", oneDNN capped at {info['isa_cap']}" if info["isa_cap"] else ""
    return (f"CPU {info['model']} ({cpu_kind()}: avx512_bf16={int(info['avx512_bf16'])} amx={int(info['amx'])}"
            f"{cap}), {info['cores']} cores")


def cpu_flags() -> str:
    """The last line's flags: ``avx512_bf16=0|1 amx=0|1`` (amx=0 when oneDNN is capped below it)."""
    info = cpu_info()
    return f"avx512_bf16={int(info['avx512_bf16'])} amx={int(info['amx'])}"
