"""The training loop (one screen) and what it needs: optimiser groups, schedule, L2-SP, resumable loop state."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import epoch_order

# forward(idx) yields (rows, logits) micro-batch by micro-batch; the loop back-propagates each before asking for the
# next, so only one micro-batch of activations is alive at a time.
Forward = Callable[[np.ndarray], Iterator[tuple[np.ndarray, torch.Tensor]]]


@dataclass
class LoopConfig:
    epochs: int = 3
    batch_size: int = 16
    label_smoothing: float = 0.0  # softens one-hot targets: less over-confident members fuse better
    max_grad_norm: float | None = 1.0  # clipping keeps the first full-FT steps on a new head from wrecking the backbone
    l2sp: float = 0.0  # λ of λ/2·||θ-θ0||² (Li et al., 2018): pulls the backbone towards its pretrained weights
    patience: int | None = None  # epochs without validation gain before stopping; None: no early stopping
    seed: int = 0


@dataclass
class LoopState:
    """Everything besides model, optimiser and scheduler that a resumed run needs (data order derives from seed)."""

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0,
                 head_names: tuple[str, ...] = ()) -> list[dict]:
    """AdamW groups: no decay on biases and norms; layer-wise lr decay (Clark et al., 2020, ELECTRA) by depth."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = [int(m.group(1)) for n, _ in named if (m := re.search(r"\.(?:layer|layers|h|blocks)\.(\d+)\.", n))]
    n_layers = max(depths) + 1 if depths else 0
    groups: dict[tuple[float, float], list] = {}
    for n, p in named:
        is_head = any(n.startswith(h) or f".{h}." in f".{n}" for h in head_names)
        if is_head:
            group_lr = lr  # the new head is not layer-decayed
        elif m := re.search(r"\.(?:layer|layers|h|blocks)\.(\d+)\.", n):
            group_lr = lr * layer_decay ** (n_layers - int(m.group(1)))
        elif "embed" in n:
            group_lr = lr * layer_decay ** (n_layers + 1)
        else:  # pooler and other top modules
            group_lr = lr
        decay = 0.0 if p.ndim < 2 or "norm" in n.lower() else weight_decay
        groups.setdefault((group_lr, decay), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
    # fused AdamW runs one kernel over all tensors of a group: measured faster than foreach on CPU in the bench
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=True)


def train_loop(forward: Forward, n: int, y: torch.Tensor, w: torch.Tensor, params: list[torch.nn.Parameter],
               optimizer, scheduler, cfg: LoopConfig, state: LoopState,
               evaluate: Callable[[], dict] | None = None, snapshot: Callable[[], None] | None = None,
               anchor: dict[int, torch.Tensor] | None = None, on_step_end: Callable[[LoopState], None] | None = None,
               train_mode: Callable[[bool], None] = lambda on: None, verbose: bool = True) -> LoopState:
    """Minimise Σ w_i·L(y_i, f(x_i)) / Σ w_i + λ R(θ); evaluate each epoch; keep the best epoch's weights."""
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=state.step, disable=not verbose, desc="fit", unit="step")
    for epoch in range(state.epoch, cfg.epochs):
        order, t0, losses = epoch_order(n, cfg.seed, epoch), time.perf_counter(), []
        train_mode(True)
        for start in range((state.step - epoch * steps_per_epoch) * cfg.batch_size, n, cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            total_w, loss_sum = w[batch].sum(), 0.0
            optimizer.zero_grad(set_to_none=True)
            for rows, logits in forward(batch):
                loss = F.cross_entropy(logits.float(), y[rows], reduction="none", label_smoothing=cfg.label_smoothing)
                loss = (loss * w[rows]).sum() / total_w
                loss.backward()
                loss_sum += loss.item()
            if anchor is not None and cfg.l2sp > 0:  # gradient of λ/2·||θ-θ0||², added without building a graph
                ps = [p for p in params if p.grad is not None and id(p) in anchor]
                torch._foreach_add_([p.grad for p in ps], torch._foreach_sub(ps, [anchor[id(p)] for p in ps]),
                                    alpha=cfg.l2sp)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state.step += 1
            losses.append(loss_sum)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if on_step_end:
                on_step_end(state)
        train_mode(False)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                  "lr": scheduler.get_last_lr()[0], "time_s": time.perf_counter() - t0}
        record.update(evaluate() if evaluate else {})
        state.history.append(record)
        state.epoch = epoch + 1
        score = record.get("val_score")
        if score is not None and score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            if snapshot:
                snapshot()
        elif score is not None:
            state.bad_epochs += 1
            if cfg.patience is not None and state.bad_epochs >= cfg.patience:
                break
    bar.close()
    return state


PROBE_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # per-example L2 strengths tried on validation
# On standardised features ||x||² is the feature count (576 for SmolLM2), so the useful strengths are larger:
# scikit-learn's C = 1 / (n * l2) = 0.003-0.01 at n = 1,600 (bench/results/smollm2_probe.txt) is l2 = 0.06-0.2.
PROBE_L2_GRID_STANDARDIZED = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def fit_standardized_probe(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float,
                           label_smoothing: float = 0.0) -> float:
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


def fit_linear_probe(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, l2: float,
                     label_smoothing: float = 0.0, max_iter: int = 100) -> float:
    """Fit ``head`` on frozen features ``x`` by full-batch L-BFGS on Σ w_i·CE / Σ w_i + l2/2·||W||², in place.

    A linear probe is a convex problem: L-BFGS solves it in a few dozen iterations with no learning rate to tune
    (Kumar et al., 2022 fit LP-FT's probe and Radford et al., 2021 CLIP's probes the same way, with scikit-learn's
    LogisticRegression). Written here rather than calling scikit-learn because the targets may be soft (distillation),
    the loss must match the fine-tuning one (label smoothing, sample weights) and the result lives in a torch head.
    Returns the final training loss.
    """
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)
    total_w = w.sum()

    def objective() -> torch.Tensor:
        ce = F.cross_entropy(head(x).float(), y, reduction="none", label_smoothing=label_smoothing)
        return (ce * w).sum() / total_w + 0.5 * l2 * head.weight.float().square().sum()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(objective())
