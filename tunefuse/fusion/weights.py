"""Weight-space fusion: pure functions over state dicts (model soups, WiSE-FT, task arithmetic, TIES, DARE).

Every function takes state dicts (``dict[str, Tensor]``) and returns a new one: inputs are never mutated, and nothing
here knows about trainers. Members must share keys, shapes and dtypes (same backbone, same classes); models that
differ belong in output-space fusion (voting/stacking). Floating tensors are combined in float32 and cast back;
integer buffers must be equal and are copied, except counters (BatchNorm's ``num_batches_tracked``), copied from the
first member. A merge of BatchNorm models should have its running statistics re-estimated afterwards
(``Finetuner.recalibrate_batchnorm``; ``WeightFusion`` does it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from safetensors.torch import load_file
from torch import Tensor

StateDict = Mapping[str, Tensor]
PathLike = Union[str, os.PathLike]
_WHY = "they come from different architectures, heads or label sets"
_FIX = ("fuse only members fine-tuned from the same backbone with the same classes; "
        "use output-space fusion (voting/stacking) for the others")
_TA_METHODS = ("sum", "ties", "dare", "dare_ties")


# ----------------------------------------------------------------------------------------------- compatibility checks
def _spec(state: Any, name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a state dict (Mapping[str, Tensor]); got {type(state).__name__}. "
                        "Pass model.state_dict() or a dict loaded with safetensors.torch.load_file.")
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def _few(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"{len(keys)} key(s) [{', '.join(map(repr, keys[:3]))}{more}]"


def _diff(ref: dict, spec: dict, ref_name: str, name: str, *, allow_extra: bool = False) -> str:
    """Describe how ``spec`` differs from ``ref`` ('' when compatible); ``allow_extra`` admits keys only in ``spec``."""
    missing, extra = ref.keys() - spec.keys(), set() if allow_extra else spec.keys() - ref.keys()
    changed = sorted(k for k in ref.keys() & spec.keys() if ref[k] != spec[k])
    parts = [f"lacks {_few(missing)}"] if missing else []
    parts += [f"has extra {_few(extra)}"] if extra else []
    if changed:
        (s1, d1), (s0, d0) = spec[changed[0]], ref[changed[0]]
        example = f"{changed[0]!r}: {list(s1)} {d1} vs {list(s0)} {d0}"
        parts.append(f"differs in shape/dtype at {_few(changed)} (e.g. {example})")
    return f"{name} vs {ref_name}: {', '.join(parts)}" if parts else ""


def _raise_incompatible(problems: list[str]) -> None:
    raise ValueError(f"incompatible state dicts: {'; '.join(problems)}; {_WHY}. Fix: {_FIX}.")


def _names(names: Sequence[str] | None, n: int, prefix: str) -> list[str]:
    if names is None:
        return [f"{prefix} {i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"names must have one entry per state ({n}); got {len(names)}: {list(names)!r}. "
                         "Pass one name per state or None.")
    return [str(x) for x in names]


def check_compatible(states: Sequence[StateDict], names: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` naming the members and keys unless all states share keys, shapes and dtypes.

    >>> import torch
    >>> check_compatible([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])
    """
    if len(states) == 0:
        raise ValueError("states must hold at least one state dict; got an empty sequence. Pass the states to fuse.")
    names = _names(names, len(states), "member")
    specs = [_spec(s, n) for s, n in zip(states, names)]
    problems = [p for spec, n in zip(specs[1:], names[1:]) if (p := _diff(specs[0], spec, names[0], n))]
    if problems:
        _raise_incompatible(problems)


# ----------------------------------------------------------------------------------------------- running float32 sums
# Integer buffers that count rather than describe (BatchNorm's steps seen): they differ between members that trained
# for different numbers of steps, carry no weight, and are copied from the first member instead of compared.
COUNTERS = ("num_batches_tracked",)


def _check_buffers(total: dict, state: StateDict, ref_name: str, name: str) -> None:
    for k, v in state.items():
        if not v.is_floating_point() and not k.endswith(COUNTERS) and not torch.equal(total[k], v):
            raise ValueError(f"non-floating tensor {k!r} differs between {name} and {ref_name}; integer buffers "
                             f"(e.g. position_ids) cannot be averaged. Fix: fuse members of one backbone and config, "
                             f"or drop {k!r} from every state dict before fusing.")


def _add(total: dict | None, state: StateDict, w: float, ref_name: str, name: str) -> dict:
    """Add ``w * state`` into the float32 running sum ``total`` (created when None); only ``total`` is written."""
    if total is None:
        return {k: v.to(torch.float32, copy=True).mul_(w) if v.is_floating_point() else v.clone()
                for k, v in state.items()}
    _check_buffers(total, state, ref_name, name)
    for k, v in state.items():
        if v.is_floating_point():
            total[k].add_(v, alpha=w)
    return total


def _finish(total: dict, dtypes: dict, denom: float) -> dict:
    # In place: ``total`` is ours and is dropped afterwards, so this saves one model's worth of memory.
    return {k: v.div_(denom).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}


def _weights(weights: Sequence[float] | None, n: int, *, normalise: bool) -> list[float]:
    if weights is None:
        w = [1.0] * n
    else:
        w = [_number(x, "weights", "a sequence of numbers", lambda v: True, f"Pass e.g. [1.0] * {n}.") for x in weights]
        if len(w) != n:
            raise ValueError(f"weights must have one entry per state ({n}); got {len(w)}: {w!r}. "
                             f"Pass {n} weights or None for equal weights.")
        if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"weights must be finite, non-negative and sum to a positive number; got {w!r}. "
                             f"Pass e.g. [1.0] * {n}, or None for equal weights.")
    return [x / sum(w) for x in w] if normalise else w


def _number(x: Any, param: str, rule: str, ok: Callable[[float], bool], fix: str) -> float:
    """``float(x)``, or a TypeError (not a number) / ValueError (``ok`` fails) that states ``rule`` and ``fix``."""
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{param} must be {rule}; got {x!r}. {fix}") from e
    if not ok(v):  # NaN fails every range check, so it lands here too
        raise ValueError(f"{param} must be {rule}; got {x!r}. {fix}")
    return v


def _resolve(path: PathLike, param: str) -> Path:
    p = Path(path)
    p = p / "model.safetensors" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{param}: {str(p)!r} does not exist. Pass a .safetensors file or a folder holding "
                                "model.safetensors (as written by save_pretrained).")
    return p


# ------------------------------------------------------------------------------------------------------ fusion methods
def uniform(states: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """(Weighted) average of state dicts, the uniform model soup (Wortsman et al., 2022, arXiv:2203.05482).

    Weights are normalised. Non-floating tensors (e.g. ``position_ids``) must be equal and are copied.

    >>> import torch
    >>> uniform([{"w": torch.zeros(2)}, {"w": torch.ones(2)}], weights=[1, 3])["w"]
    tensor([0.7500, 0.7500])
    """
    check_compatible(states)
    w = _weights(weights, len(states), normalise=True)
    total = None
    for i, (s, wi) in enumerate(zip(states, w)):
        total = _add(total, s, wi, "member 0", f"member {i}")
    return _finish(total, {k: v.dtype for k, v in states[0].items()}, 1.0)


def uniform_from_files(paths: Sequence[PathLike], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Same as :func:`uniform`, streaming ``.safetensors`` files one at a time (peak memory ~ two models).

    Each path is a ``.safetensors`` file or a folder holding ``model.safetensors``. Model soups
    (Wortsman et al., 2022, arXiv:2203.05482).

    >>> import torch, tempfile, os
    >>> from safetensors.torch import save_file
    >>> d = tempfile.mkdtemp(); save_file({"w": torch.ones(2)}, os.path.join(d, "a.safetensors"))
    >>> uniform_from_files([os.path.join(d, "a.safetensors"), d + "/a.safetensors"])["w"]
    tensor([1., 1.])
    """
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths must be a sequence of paths; got the single path {str(paths)!r}. Wrap it in a list.")
    files = [_resolve(p, "paths") for p in paths]  # fail fast, before reading gigabytes
    if not files:
        raise ValueError("paths must hold at least one file; got an empty sequence. Pass the files to fuse.")
    w = _weights(weights, len(files), normalise=True)
    total, ref, first = None, None, str(files[0])
    for f, wi in zip(files, w):
        state = load_file(str(f))
        spec = _spec(state, str(f))
        ref = spec if ref is None else ref
        if problem := _diff(ref, spec, first, str(f)):
            _raise_incompatible([problem])
        total = _add(total, state, wi, first, str(f))
        del state  # free before the next load: only the running sum and one model are alive
    return _finish(total, {k: d for k, (_, d) in ref.items()}, 1.0)


def interpolate(a: StateDict, b: StateDict, alpha: float) -> dict[str, Tensor]:
    """WiSE-FT: ``(1 - alpha) * a + alpha * b`` (Wortsman et al., 2022, arXiv:2109.01903).

    ``a`` is usually the pretrained state and ``b`` the fine-tuned one. Keys only in ``b`` (a new classification head
    that ``a`` lacks) are copied from ``b`` unchanged, since there is no pretrained value to move from; keys only in
    ``a`` are an error. Non-floating tensors must be equal and are copied.

    >>> import torch
    >>> interpolate({"w": torch.zeros(2)}, {"w": torch.ones(2), "head": torch.ones(1)}, 0.25)
    {'w': tensor([0.2500, 0.2500]), 'head': tensor([1.])}
    """
    alpha = _number(alpha, "alpha", "in [0, 1] (0 keeps a, 1 keeps b)", lambda v: 0 <= v <= 1, "Pass e.g. 0.5.")
    if problem := _diff(_spec(a, "a"), _spec(b, "b"), "a", "b", allow_extra=True):
        _raise_incompatible([problem])
    _check_buffers(b, a, "b", "a")
    return {k: ((1 - alpha) * a[k].float() + alpha * v.float()).to(v.dtype)
            if k in a and v.is_floating_point() else v.clone() for k, v in b.items()}


def _trim(tau: Tensor, density: float) -> Tensor:
    """TIES step 1: keep the top ``density`` fraction of entries by magnitude (rounded, at least one), zero the rest."""
    if density >= 1.0 or tau.numel() == 0:
        return tau
    k = max(1, math.floor(density * tau.numel() + 0.5))
    magnitude = tau.abs()
    # A threshold rather than top-k indices: deterministic, no index tensor; entries tied at it are all kept.
    threshold = torch.kthvalue(magnitude.flatten(), tau.numel() - k + 1).values
    return tau * (magnitude >= threshold)


def _elect_sign(taus: Tensor) -> Tensor:
    """TIES step 2: per parameter, the sign of the summed (weighted) task vectors, i.e. the side with more mass."""
    return torch.sign(taus.sum(dim=0))


def _dare(tau: Tensor, density: float, gen: torch.Generator) -> Tensor:
    """DARE: drop each entry with probability ``1 - density`` and rescale survivors so the expectation is unchanged."""
    if density >= 1.0:
        return tau
    keep = torch.rand(tau.shape, generator=gen, device=gen.device) < density
    return tau * keep.to(tau.device) / density


def task_arithmetic(base: StateDict, states: Sequence[StateDict], *, weights: Sequence[float] | None = None,
                    scale: float = 1.0, method: str = "sum", density: float = 1.0, seed: int = 0) -> dict[str, Tensor]:
    """Merge fine-tuned states as ``base + scale * combine(state_i - base)``; TIES and DARE are options of ``method``.

    ``"sum"``: weighted sum of task vectors (Ilharco et al., 2023, arXiv:2212.04089). ``"ties"``: trim to ``density``,
    elect signs, disjoint (weighted) mean (Yadav et al., 2023, arXiv:2306.01708). ``"dare"``: random drop with keep
    probability ``density`` and rescale, then sum (Yu et al., 2024, arXiv:2311.03099); ``"dare_ties"``: DARE then TIES
    sign election and disjoint mean. Weights are not normalised for the sum (task addition adds vectors). Keys in the
    states but not in ``base`` (a freshly initialised head has no pretrained value, so its task vector is undefined)
    are the weighted average of the states; non-floating tensors are copied from ``base``.

    >>> import torch
    >>> base = {"w": torch.zeros(3)}
    >>> ft = [{"w": torch.tensor([1.0, -2.0, 0.5])}, {"w": torch.tensor([3.0, 1.0, 0.0])}]
    >>> task_arithmetic(base, ft, method="ties")["w"]
    tensor([ 2.0000, -2.0000,  0.5000])
    """
    if method not in _TA_METHODS:
        raise ValueError(f"method must be one of {list(_TA_METHODS)}; got {method!r}. Pick one of these.")
    density = _number(density, "density", "in (0, 1] (the fraction of each task vector kept)", lambda v: 0 < v <= 1,
                      "Use e.g. 0.2 for TIES/DARE, or 1.0 to keep everything.")
    scale = _number(scale, "scale", "a finite number", math.isfinite, "Pass e.g. 1.0 (0.3-1.0 when adding many tasks).")
    check_compatible(states)
    if problem := _diff(_spec(base, "base"), _spec(states[0], "member 0"), "base", "member 0", allow_extra=True):
        _raise_incompatible([problem])
    w = _weights(weights, len(states), normalise=False)
    gen = torch.Generator().manual_seed(seed)  # one generator for the whole call: same inputs + seed, same merge
    out = {}
    for k, b0 in base.items():
        if not b0.is_floating_point():
            out[k] = b0.clone()
            continue
        taus = [s[k].float() - b0.float() for s in states]
        if method in ("dare", "dare_ties"):
            taus = [_dare(t, density, gen) for t in taus]
        if method == "ties":
            taus = [_trim(t, density) for t in taus]
        if method in ("sum", "dare"):
            delta = sum(wi * t for wi, t in zip(w, taus))
        else:
            wt = torch.tensor(w, device=b0.device).view(-1, *[1] * b0.dim())
            weighted = torch.stack(taus) * wt
            agree = (torch.sign(weighted) == _elect_sign(weighted)) & (weighted != 0)
            den = (wt * agree).sum(dim=0)
            # Disjoint mean; where no member agrees, numerator and denominator are 0 and the delta stays 0.
            delta = (weighted * agree).sum(dim=0) / den.masked_fill(den == 0, 1.0)
        out[k] = (b0.float() + scale * delta).to(b0.dtype)
    if new := [k for k in states[0] if k not in base]:
        out.update(uniform([{k: s[k] for k in new} for s in states], w))
    return out


def greedy_soup(candidates: Sequence[StateDict | PathLike], score: Callable[[dict[str, Tensor]], float], *,
                names: Sequence[str] | None = None) -> tuple[dict[str, Tensor], list[int]]:
    """Greedy model soup (Wortsman et al., 2022, arXiv:2203.05482): add candidates best-first while the score holds.

    ``candidates`` are state dicts or paths (``.safetensors`` files or folders), loaded one at a time; ``score`` is
    higher-is-better (e.g. held-out accuracy). Returns the soup and the chosen indices in the order they were added
    (the best individual first). Memory: the running sum, one candidate and one trial soup.

    >>> import torch
    >>> cands = [{"w": torch.tensor([v])} for v in (0.0, 2.0, 9.0)]
    >>> soup, chosen = greedy_soup(cands, lambda s: -abs(s["w"].item() - 1.0))
    >>> soup["w"], chosen
    (tensor([1.]), [0, 1])
    """
    if len(candidates) == 0:
        raise ValueError("candidates must hold at least one state dict or path; got an empty sequence.")
    if names is None:
        names = [str(c) if isinstance(c, (str, os.PathLike)) else f"candidate {i}" for i, c in enumerate(candidates)]
    names = _names(names, len(candidates), "candidate")

    def load(i: int) -> StateDict:
        c = candidates[i]
        if isinstance(c, (str, os.PathLike)):
            return load_file(str(_resolve(c, "candidates")))
        _spec(c, names[i])  # raises TypeError for anything that is neither a path nor a state dict
        return c

    def rate(state: StateDict, what: str) -> float:
        return _number(score(state), "score(state)", f"a finite number (higher is better) for {what}",
                       math.isfinite, "Return e.g. held-out accuracy as a float.")

    scores, ref = [], None
    for i in range(len(candidates)):  # the ranking pass holds one candidate at a time: load, score, free
        state = load(i)
        spec = _spec(state, names[i])
        ref = spec if ref is None else ref
        if problem := _diff(ref, spec, names[0], names[i]):
            _raise_incompatible([problem])
        scores.append(rate(state, names[i]))
        del state
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])  # sorted() is stable: ties keep input order
    dtypes = {k: d for k, (_, d) in ref.items()}
    chosen, best = [order[0]], scores[order[0]]
    total, count = _add(None, load(order[0]), 1.0, names[order[0]], names[order[0]]), 1
    for i in order[1:]:
        state = load(i)
        _check_buffers(total, state, names[order[0]], names[i])
        trial = {k: (t + state[k]).div_(count + 1).to(dtypes[k]) if t.is_floating_point() else t
                 for k, t in total.items()}
        s = rate(trial, f"the soup plus {names[i]}")
        if s >= best:  # ">=": a candidate that does not hurt stays in, as in the paper
            total, count, best = _add(total, state, 1.0, names[order[0]], names[i]), count + 1, s
            chosen.append(i)
        del state, trial
    return _finish(total, dtypes, count), chosen


# ------------------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class WeightMethod:
    """A weight-space fusion method: the function to call, what ``WeightFusion`` picks on validation data, and the
    paper it comes from. ``search``: "none" (the function alone), "greedy" (it takes a score), "alpha" (WiSE-FT's
    mixing weight) or "scale" (a task-arithmetic merge scale); ``options``: keyword arguments of ``fn``."""

    name: str
    fn: Callable[..., Any]
    paper: str
    url: str
    search: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_base: bool = False  # uses the pretrained weights θ0 (task vectors, WiSE-FT)


WEIGHT_METHODS: dict[str, WeightMethod] = {}


def _register(name: str, fn: Callable[..., Any], paper: str, url: str, **kw: Any) -> None:
    if name in WEIGHT_METHODS:
        raise ValueError(f"weight method {name!r} is already registered; pick a new name.")
    WEIGHT_METHODS[name] = WeightMethod(name, fn, paper, url, **kw)


_SOUPS = "Wortsman et al., 2022, Model soups: averaging weights of multiple fine-tuned models"
_TIES = ("Yadav et al., 2023, TIES-Merging: Resolving interference when merging models",
         "https://arxiv.org/abs/2306.01708")
_DARE = ("Yu et al., 2024, Language models are Super Mario: absorbing abilities from homologous models as a free "
         "lunch", "https://arxiv.org/abs/2311.03099")
_register("uniform_soup", uniform, _SOUPS, "https://arxiv.org/abs/2203.05482")
_register("greedy_soup", greedy_soup, _SOUPS, "https://arxiv.org/abs/2203.05482", search="greedy")
_register("wise_ft", interpolate, "Wortsman et al., 2022, Robust fine-tuning of zero-shot models",
          "https://arxiv.org/abs/2109.01903", search="alpha", needs_base=True)
_register("task_arithmetic", task_arithmetic, "Ilharco et al., 2023, Editing models with task arithmetic",
          "https://arxiv.org/abs/2212.04089", search="scale", options={"method": "sum"}, needs_base=True)
_register("ties", task_arithmetic, *_TIES, search="scale", options={"method": "ties"}, needs_base=True)
_register("dare", task_arithmetic, *_DARE, search="scale", options={"method": "dare"}, needs_base=True)
_register("dare_ties", task_arithmetic, _DARE[0] + "; sign election of TIES", _DARE[1], search="scale",
          options={"method": "dare_ties"}, needs_base=True)


def get_weight_method(name: str) -> WeightMethod:
    """Look up a weight-space fusion method by name.

    >>> get_weight_method("ties").url
    'https://arxiv.org/abs/2306.01708'
    """
    try:
        return WEIGHT_METHODS[name]
    except KeyError as e:
        raise ValueError(f"unknown weight method {name!r}; valid names: {sorted(WEIGHT_METHODS)}. "
                         "Pick one of these.") from e
