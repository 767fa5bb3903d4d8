"""Fine-tuning strategies: which parameters train, and in which stages. Variants are entries, not subclasses."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str
    probe: bool  # stage 1: train the new head alone on frozen (cached) backbone features
    tune: str | None  # stage 2: "full" (every weight), "lora" (low-rank adapters + head) or None (stop after stage 1)
    lr: float | None  # default learning rate of stage 2: adapters want ~10x what full fine-tuning does; the probe
    # (stage 1) is solved by L-BFGS and has none
    paper: str


STRATEGIES: dict[str, Strategy] = {}


def _register(s: Strategy) -> None:
    if s.name in STRATEGIES:
        raise ValueError(f"strategy {s.name!r} is already registered")
    STRATEGIES[s.name] = s


_register(Strategy("full", probe=False, tune="full", lr=5e-5, paper="Devlin et al., 2019 (BERT fine-tuning)"))
_register(Strategy("head", probe=True, tune=None, lr=None, paper="linear probe on frozen features"))
_register(Strategy("lp-ft", probe=True, tune="full", lr=3e-5,
                   paper="Kumar et al., 2022, Fine-Tuning can Distort Pretrained Features (LP-FT)"))
_register(Strategy("lora", probe=False, tune="lora", lr=5e-4, paper="Hu et al., 2022, LoRA (via peft)"))


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not one of {sorted(STRATEGIES)}; fix: pick one, e.g. "
                         f"strategy='full' (all weights) or 'head' (frozen backbone, fastest)")
    return STRATEGIES[name]
