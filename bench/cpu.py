"""The CPU line every speed bench prints in its header (speed figures mean little without the machine's name),
the report a bench prints and saves, and the environment it sets before torch loads.

Torch-free at import (tunefuse.device is imported inside the functions), so ``prepare`` can run before torch does.
"""
from __future__ import annotations

import os

__all__ = ["Report", "cpu_kind", "cpu_summary", "cpu_flags", "prepare"]


def prepare(isa: str | None) -> None:
    """What a speed bench sets before torch is imported: oneDNN's ISA cap (``--isa``; oneDNN reads it once, at its
    first call), an offline hub and quiet tokenizers."""
    if isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = isa.upper()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_kind() -> str:
    from tunefuse.device import cpu_kind

    return cpu_kind()


def cpu_summary() -> str:
    from tunefuse.device import cpu_info

    info = cpu_info()
    cap = f", oneDNN capped at {info['isa_cap']}" if info["isa_cap"] else ""
    return (f"CPU {info['model']} ({cpu_kind()}: avx512_bf16={int(info['avx512_bf16'])} amx={int(info['amx'])}"
            f"{cap}), {info['cores']} cores")


def cpu_flags() -> str:
    """The last line's flags: ``avx512_bf16=0|1 amx=0|1`` (amx=0 when oneDNN is capped below it)."""
    from tunefuse.device import cpu_info

    info = cpu_info()
    return f"avx512_bf16={int(info['avx512_bf16'])} amx={int(info['amx'])}"


class Report:
    """What a bench prints, kept to be written as its results file at the end (atomically: a killed run leaves the
    previous file whole)."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        os.replace(tmp, path)
        print(f"results written to {path}")
