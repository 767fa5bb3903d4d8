"""The CPU line every speed bench prints in its header (speed figures mean little without the machine's name),
and the report a bench prints and saves."""
from __future__ import annotations

import os

from tunefuse.device import cpu_info, cpu_kind

__all__ = ["Report", "cpu_kind", "cpu_summary", "cpu_flags"]


def cpu_summary() -> str:
    info = cpu_info()
    cap = f", oneDNN capped at {info['isa_cap']}" if info["isa_cap"] else ""
    return (f"CPU {info['model']} ({cpu_kind()}: avx512_bf16={int(info['avx512_bf16'])} amx={int(info['amx'])}"
            f"{cap}), {info['cores']} cores")


def cpu_flags() -> str:
    """The last line's flags: ``avx512_bf16=0|1 amx=0|1`` (amx=0 when oneDNN is capped below it)."""
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
