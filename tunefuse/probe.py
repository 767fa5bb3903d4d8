"""The linear probe: a task's new linear head fitted on frozen backbone features by full-batch L-BFGS.

A linear probe is a convex problem: L-BFGS solves it in a few dozen iterations with no learning rate to tune
(Kumar et al., 2022 fit LP-FT's probe and Radford et al., 2021 CLIP's probes the same way, with scikit-learn's
LogisticRegression). Written here rather than calling scikit-learn because the targets may be soft (distillation),
the loss is the task's own (label smoothing, sample weights, start/end positions of a QA window) and the result lives
in a torch head.
"""
from __future__ import annotations

from typing import Callable

import torch

# loss(head(x), label_smoothing) -> one loss per unit (a text, a sentence, a window)
UnitLoss = Callable[[torch.Tensor, float], torch.Tensor]

PROBE_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # per-example L2 strengths tried on validation
# On standardised features ||x||² is the feature count (576 for SmolLM2), so the useful strengths are larger:
# scikit-learn's C = 1 / (n * l2) = 0.003-0.01 at n = 1,600 (bench/results/smollm2_probe.txt) is l2 = 0.06-0.2.
PROBE_L2_GRID_STANDARDIZED = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def _as_loss(y: torch.Tensor | UnitLoss) -> UnitLoss:
    if callable(y):
        return y
    from .tasks.base import cross_entropy

    return lambda out, ls: cross_entropy(out, y, ls)


def fit_linear_probe(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor | UnitLoss, w: torch.Tensor,
                     l2: float, label_smoothing: float = 0.0, max_iter: int = 100) -> float:
    """Fit ``head`` on features ``x`` by L-BFGS on Σ w_u·loss_u / Σ w_u + l2/2·||W||², in place.

    ``y``: class indices or probability rows of each row of ``x`` (classification), or a task's per-unit loss of
    ``head(x)``; ``w``: one weight per unit. Returns the final training objective.
    """
    loss_fn = _as_loss(y)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)
    total_w = w.sum()

    def objective() -> torch.Tensor:
        return (loss_fn(head(x).float(), label_smoothing) * w).sum() / total_w + 0.5 * l2 * head.weight.float(
        ).square().sum()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(objective())


def fit_standardized_probe(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor | UnitLoss, w: torch.Tensor,
                           l2: float, label_smoothing: float = 0.0) -> float:
    """``fit_linear_probe`` on standardised features (each column of ``x`` to mean 0, variance 1), folded back into
    ``head`` so that it reads the raw features: W = V / σ, b = c - W·μ. The L2 penalty then weighs every feature
    alike, as scikit-learn's StandardScaler + LogisticRegression does; decoders' hidden states have a few outlier
    dimensions orders of magnitude larger than the rest, which a penalty on raw weights favours. A head without a
    bias (Llama's score) is only scaled, as StandardScaler(with_mean=False) with no intercept would be."""
    biased = head.bias is not None  # a bias-less head (Llama's score) can only be scaled: the mean stays in
    mu = x.float().mean(0) if biased else torch.zeros(x.shape[1], device=x.device)
    sd = x.float().std(0).clamp_min(1e-6)
    inner = torch.nn.Linear(x.shape[1], head.out_features, bias=biased, device=x.device)
    with torch.no_grad():
        inner.weight.copy_(head.weight.float() * sd)
        if biased:
            inner.bias.copy_(head.bias.float() + head.weight.float() @ mu)
    loss = fit_linear_probe(inner, (x.float() - mu) / sd, y, w, l2, label_smoothing)
    with torch.no_grad():
        head.weight.copy_(inner.weight / sd)
        if biased:
            head.bias.copy_(inner.bias - (inner.weight / sd) @ mu)
    return loss
