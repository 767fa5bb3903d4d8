"""The training loop (one screen) and what it needs: optimiser groups, schedule, L2-SP, resumable training state.

The loop is task-blind: ``forward`` yields each micro-batch's per-unit losses (the task computed them), the loop
weights, accumulates, clips, steps and evaluates.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import epoch_order

# forward(idx) yields (rows, per-unit loss) micro-batch by micro-batch; the loop back-propagates each before asking for
# the next, so only one micro-batch of activations is alive at a time.
Forward = Callable[[np.ndarray], Iterator[tuple[np.ndarray, torch.Tensor]]]


@dataclass
class LoopConfig:
    epochs: int = 3
    batch_size: int = 16
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
    losses: list[float] = field(default_factory=list)  # this epoch's step losses so far (a resumed epoch's mean)
    best: dict[str, torch.Tensor] = field(default_factory=dict)  # the best epoch's trainable weights
    finished: bool = False  # the loop returned (all epochs run, or early stopping): a resumed fit skips it


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


class AdamW(torch.optim.AdamW):
    """torch's fused AdamW for dense gradients; a parameter with a sparse gradient (a token-embedding matrix made
    ``sparse=True``: a batch of 16 reviews touches ~700 of MiniLM's 30,522 rows) is updated on the touched rows only.

    Its dense gradient would be a 47 MB tensor allocated, zeroed (page faults: 40 ms a step on 2 cores,
    bench/results/profile_train_*), clipped and stepped every batch for a few hundred rows. The sparse update is lazy
    Adam (TensorFlow's LazyAdam, torch's SparseAdam): an untouched row keeps its weights, moments and decoupled weight
    decay until a batch next touches it. Written by hand because torch's SparseAdam has no weight decay and cannot
    share one optimiser, schedule and state dict with the fused dense step. State keys match torch's AdamW.
    """

    @torch.no_grad()
    def step(self, closure=None):
        sparse = {p: p.grad for g in self.param_groups for p in g["params"] if p.grad is not None and p.grad.is_sparse}
        for p in sparse:
            p.grad = None  # the fused kernel sees dense gradients only
        try:
            loss = super().step(closure)
        finally:
            for p, grad in sparse.items():
                p.grad = grad
        # torch's fused kernel writes the weights without bumping their version counters: bump them, so whatever
        # watches for in-place changes (autograd's checks, tunefuse.inference's bf16 copy) sees this step
        stepped = [p for g in self.param_groups for p in g["params"] if p.grad is not None and p not in sparse]
        if stepped:
            torch.autograd.graph.increment_version(stepped)
        for group in (g for g in self.param_groups if sparse):
            (beta1, beta2), lr, eps, decay = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p not in sparse:
                    continue
                grad = sparse[p].coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[p]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t = state["step"].item()
                m = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                w = p[rows].mul_(1 - lr * decay)
                w.addcdiv_(m, v.div_(1 - beta2 ** t).sqrt_().add_(eps), value=-lr / (1 - beta1 ** t))
                p.index_copy_(0, rows, w)
        return loss


def make_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
    # fused AdamW runs one kernel over all tensors of a group: measured faster than foreach on CPU in the bench
    return AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=True)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (coalesced here, once, for the step)."""
    dense, sparse = [], []
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            sparse.append(p)
        elif p.grad is not None:
            dense.append(p.grad)
    if not sparse:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = [torch.nn.utils.get_total_norm(dense)] if dense else []
    norms += [p.grad.values().norm() for p in sparse]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if dense:
        torch._foreach_mul_(dense, coef)
    for p in sparse:
        p.grad = p.grad * coef
    return total


def data_parallel() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group this process is in; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_process_group() -> bool:
    """Join the process group a launcher describes (``torchrun`` / ``accelerate launch`` set WORLD_SIZE, RANK,
    MASTER_ADDR...): gloo for CPU tensors, and nccl for CUDA tensors where there are GPUs (one backend per device
    type, so a fit on ``device='cpu'`` of a GPU machine still reduces on gloo). True when this process is one of a
    launched group of two or more (a launch of one process is a plain fit)."""
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and os.environ.get("LOCAL_RANK") is not None
        if gpu:  # one GPU per rank: "cuda" then means this rank's device
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo")
    return True


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every rank's gradient in one flat all-reduce (what DDP's reducer does, done here after the micro-batches:
    DDP's reducer only arms inside its wrapper's forward, which the tasks' logits functions do not call, and a
    step of several micro-batches would otherwise sync once per micro-batch). A parameter with a gradient on some
    rank but not this one (its share of the batch was empty, or did not reach it) adds zeros; one with a gradient
    on no rank keeps ``grad=None``, so the optimiser skips it as one process would (no weight decay, no moments)."""
    import torch.distributed as dist

    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    params = [p for p, h in zip(params, has.tolist()) if h > 0]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if any(g.is_sparse for g in grads):
        raise ValueError("sparse gradients under data parallelism: the token embedding must stay dense (tunefuse "
                         "turns its sparse updates off when launched by torchrun)")
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for p, g in zip(params, torch._utils._unflatten_dense_tensors(flat, grads)):
        p.grad = g if p.grad is None else p.grad.copy_(g)


def from_rank0(value):
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself outside a process group. Decisions
    taken from floats (early stopping, the best epoch, whether a saved state exists) are rank 0's, so no rank can
    take another branch than the others and hang the next collective."""
    import torch.distributed as dist

    if data_parallel()[1] < 2:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    import torch.distributed as dist

    if data_parallel()[1] > 1:
        dist.barrier()


def train_loop(forward: Forward, n: int, w: torch.Tensor, params: list[torch.nn.Parameter], optimizer, scheduler,
               cfg: LoopConfig, state: LoopState, evaluate: Callable[[], dict] | None = None,
               snapshot: Callable[[], dict[str, torch.Tensor]] | None = None,
               anchor: dict[int, torch.Tensor] | None = None, on_step_end: Callable[[LoopState], None] | None = None,
               on_epoch_end: Callable[[dict], None] | None = None,
               train_mode: Callable[[bool], None] = lambda on: None, verbose: bool = True,
               buffers: list[torch.Tensor] = ()) -> LoopState:
    """Minimise Σ w_i·L_i / Σ w_i + λ R(θ); evaluate each epoch; keep the best epoch's weights in ``state.best``.

    Resumes from ``state`` (epoch, step inside the epoch, early-stopping counters): with the model, optimiser and
    scheduler restored by :func:`load_training_state`, a resumed run continues exactly where the saved one stood.
    A state that is already ``finished`` returns at once. ``on_epoch_end(record)`` sees each epoch's record (a
    search's pruner: it may raise to stop the fit).

    Data parallel (a process group of ``world`` ranks, e.g. ``torchrun --nproc-per-node 2``): every rank draws the
    same global batch, runs forward and backward on its strided share ``batch[rank::world]``, each share's loss
    divided by the global batch's weight, and the summed gradients give every rank the one-process step. At each
    epoch's end the ``buffers`` (BatchNorm's running statistics) are rank 0's on every rank, as DDP's
    ``broadcast_buffers`` makes them, and the epoch's record (validation score: early stopping) is rank 0's.
    """
    rank, world = data_parallel()
    if state.finished:
        return state
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=state.step, disable=not verbose, desc="fit", unit="step")
    for epoch in range(state.epoch, cfg.epochs):
        order, t0 = epoch_order(n, cfg.seed, epoch), time.perf_counter()
        train_mode(True)
        for start in range((state.step - epoch * steps_per_epoch) * cfg.batch_size, n, cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            total_w, loss_sum = w[batch].sum(), 0.0
            optimizer.zero_grad(set_to_none=True)
            share = batch[rank::world]
            for rows, unit_loss in forward(share) if len(share) else ():
                loss = (unit_loss * w[rows]).sum() / total_w
                loss.backward()
                loss_sum += loss.item()
            if world > 1:
                all_reduce_gradients(params)
                loss_sum = _summed(loss_sum, params[0].device if params else "cpu")
            if anchor is not None and cfg.l2sp > 0:  # gradient of λ/2·||θ-θ0||², added without building a graph
                ps = [p for p in params if p.grad is not None and id(p) in anchor]
                torch._foreach_add_([p.grad for p in ps], torch._foreach_sub(ps, [anchor[id(p)] for p in ps]),
                                    alpha=cfg.l2sp)
            if cfg.max_grad_norm:
                clip_grad_norm(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.losses.append(loss_sum)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(state.losses[-20:]):.4f}")
            if on_step_end:
                on_step_end(state)
        train_mode(False)
        if world > 1:
            import torch.distributed as dist

            for b in buffers:
                dist.broadcast(b, src=0)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(state.losses)) if state.losses else float("nan"),
                  "lr": scheduler.get_last_lr()[0], "time_s": time.perf_counter() - t0}
        record.update(evaluate() if evaluate else {})
        record = from_rank0(record)
        state.history.append(record)
        state.epoch, state.losses = epoch + 1, []
        if on_epoch_end is not None:
            on_epoch_end(record)
        score = record.get("val_score")
        if score is not None and score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            if snapshot:
                state.best = snapshot()
        elif score is not None:
            state.bad_epochs += 1
            if cfg.patience is not None and state.bad_epochs >= cfg.patience:
                break
    state.finished = True
    bar.close()
    return state


def _summed(x: float, device) -> float:
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64 if torch.device(device).type == "cpu" else torch.float32,
                     device=device)
    dist.all_reduce(t)
    return float(t.item())


def save_training_state(path, model: torch.nn.Module, optimizer, scheduler, state: LoopState) -> None:
    """Write everything a killed fit needs to continue mid-epoch: trainable weights, optimiser moments, schedule,
    torch RNG (dropout masks), loop counters, history and the best epoch's weights. safetensors + JSON, atomic."""
    from safetensors.torch import save_file

    from .checkpoint import atomic_folder, write_json

    tensors = {f"model.{k}": p.detach().contiguous().clone() for k, p in model.named_parameters() if p.requires_grad}
    tensors.update({f"best.{k}": v.contiguous() for k, v in state.best.items()})
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout masks on the GPU have their own RNG
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    meta = {"loop": {k: v for k, v in vars(state).items() if k != "best"}, "param_groups": opt["param_groups"],
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}}
    with atomic_folder(path) as tmp:
        save_file(tensors, str(tmp / "training_state.safetensors"))
        write_json(tmp / "training_state.json", meta)


def load_training_state(path, model: torch.nn.Module, optimizer, scheduler) -> LoopState:
    """Restore what :func:`save_training_state` wrote into a freshly built model, optimiser and scheduler."""
    from pathlib import Path

    from safetensors.torch import load_file

    from .checkpoint import read_json

    path = Path(path)
    meta = read_json(path / "training_state.json", "training state")
    tensors = load_file(str(path / "training_state.safetensors"))
    named = dict(model.named_parameters())
    missing = [k for k, p in named.items() if p.requires_grad and f"model.{k}" not in tensors]
    if missing:
        raise ValueError(f"{str(path)!r} was saved for another model: it lacks {missing[:3]}; fix: resume with the "
                         "same backbone, task and strategy, or start the fit afresh")
    with torch.no_grad():
        for k, p in named.items():
            if f"model.{k}" in tensors:
                p.copy_(tensors[f"model.{k}"])
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            slots.setdefault(int(idx), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(dict(meta["scheduler"], lr_lambdas=[None] * len(optimizer.param_groups)))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    return LoopState(**meta["loop"], best=best)


def resumable(folder, model: torch.nn.Module, optimizer, scheduler, steps_per_epoch: int, every_s: float,
              label: str = "training", verbose: bool = True) -> tuple[LoopState, Callable]:
    """(state, on_step_end) for :func:`train_loop`: the training state saved in ``folder`` restored into ``model``,
    the optimiser and the schedule (or a fresh state), and the step hook that saves it at every epoch's end and every
    ``every_s`` seconds (``force=True``: now), then passes the ``step`` fault-injection point."""
    from pathlib import Path

    from . import faults

    folder = Path(folder)
    state = LoopState()
    if from_rank0((folder / "training_state.json").is_file()):  # every rank resumes, or none
        state = load_training_state(folder, model, optimizer, scheduler)
        if verbose:
            print(f"resuming {label} from {folder} (epoch {state.epoch}, step {state.step})", flush=True)
    barrier()  # no rank reads while rank 0 may already write
    last = time.monotonic()

    rank0 = data_parallel()[0] == 0  # every rank holds the same state: the first one writes it

    def on_step_end(state: LoopState, force: bool = False) -> None:
        nonlocal last
        if rank0 and (force or state.step % steps_per_epoch == 0 or time.monotonic() - last >= every_s):
            save_training_state(folder, model, optimizer, scheduler, state)
            last = time.monotonic()
        faults.point("step")

    return state, on_step_end
