"""Behaviour pretraining of a CTR network on an interaction log: (user, item, time) only, never a label.

Objective: implicit feedback with sampled negatives (He et al., 2017, Neural Collaborative Filtering), conditioned
on the user's history before each event. Each logged (user, item) pair at its time, with the items the user
interacted with before it, is a positive; the same user and history with ``negatives`` items drawn uniformly from the
vocabulary are negatives; the network is trained to tell them apart (binary cross-entropy on its two outputs).

Why this and not masked-item or next-item softmax: it trains *the same network* the fine-tune runs (the user and item
embeddings, their FM/cross interactions, DIN's attention from the candidate to the history), so every weight but the
head transfers, for every architecture; a masked-item transformer would pretrain a sequence model no CTR
architecture here contains. The negatives are scored through the full tower, which softmax over 1,682 items would
make 1,682 times dearer. Attribute fields (gender, genres, ...) are given their out-of-vocabulary value throughout
pretraining and numbers their mean: the log carries behaviour only. Validation: HR@10 and NDCG@10 of each held-out
interaction against 100 sampled items (the NCF protocol), reported per epoch; the best epoch is kept.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_folder, write_json
from ..train import LoopConfig, LoopState, linear_schedule, make_optimizer, param_groups, train_loop
from .features import OOV, PAD, FeatureEncoder
from .metrics import ranking_at_k
from .models import CTRNet, architecture

FORMAT = "tunefuse.ctr.pretrained/1"
EVAL_NEGATIVES = 100


def behaviour_only(arrays: dict, encoder: FeatureEncoder, task) -> dict[str, torch.Tensor]:
    """The arrays with every field that is not user, item or history blanked: ids to OOV, multi-hot to padding,
    numbers to 0 (the training mean after standardisation)."""
    out = {k: torch.as_tensor(v).clone() for k, v in arrays.items()}
    ids = [f.name for f in encoder.fields if f.kind == "id"]
    for j, name in enumerate(ids):
        if name not in (task.user, task.item):
            out["ids"][:, j] = OOV
    for k in out:
        if k.startswith("multi:"):
            out[k].fill_(PAD)
        elif k == "numeric":
            out[k].zero_()
    return out


def _with_items(inputs: dict, item_col: int, items: torch.Tensor) -> dict:
    """``inputs`` repeated once per column of ``items`` (rows, m) with the candidate item replaced."""
    m = items.shape[1]
    rep = {k: v.repeat_interleave(m, 0) for k, v in inputs.items()}
    rep["ids"] = rep["ids"].clone()
    rep["ids"][:, item_col] = items.reshape(-1)
    return rep


def pretrain_ctr(log, *, task, out, X_val=None, epochs: int = 5, negatives: int = 4, batch_size: int = 512,
                 lr: float = 1e-3, weight_decay: float = 0.0, config_overrides: dict | None = None,
                 random_state: int = 0, verbose: int = 1) -> Path:
    """Pretrain ``task``'s network on the interaction rows ``log`` and write it to the folder ``out``."""
    t0 = time.perf_counter()
    if not (isinstance(negatives, int) and negatives >= 1):
        raise ValueError(f"negatives={negatives!r} is invalid; fix: pass an int >= 1, e.g. 4")
    log = task.check_X(log, "log")
    encoder = FeatureEncoder.fit(log, task)
    arrays = behaviour_only(encoder.transform(log, task, task.max_history), encoder, task)
    item_col = [f.name for f in encoder.fields if f.kind == "id"].index(task.item)
    n_items = encoder[task.item].size
    if n_items <= 3:
        raise ValueError(f"the log's item column {task.item!r} has {n_items - 2} values (or hash buckets); negative "
                         "sampling needs at least 2: fix: pass the whole interaction log")
    cfg = architecture(task, config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        model = CTRNet(dict(cfg, dropout=0.0), encoder)
        gen = torch.Generator().manual_seed(random_state)
        n = len(log)

        def forward(batch):
            rows = torch.as_tensor(batch)
            inputs = {k: v[rows] for k, v in arrays.items()}
            neg = torch.randint(2, n_items, (len(rows), negatives), generator=gen)
            pos_logits = model(**inputs)
            neg_logits = model(**_with_items(inputs, item_col, neg)).view(len(rows), negatives, 2)
            loss = torch.nn.functional.cross_entropy(pos_logits, torch.ones(len(rows), dtype=torch.long),
                                                     reduction="none")
            neg_loss = torch.nn.functional.cross_entropy(neg_logits.reshape(-1, 2),
                                                         torch.zeros(len(rows) * negatives, dtype=torch.long),
                                                         reduction="none").view(len(rows), negatives)
            yield batch, (loss + neg_loss.sum(1)) / (1 + negatives)

        val = None
        if X_val is not None:
            X_val = task.check_X(X_val, "X_val")
            val_arrays = behaviour_only(encoder.transform(X_val, task, task.max_history), encoder, task)
            val = (val_arrays, eval_negatives(arrays["ids"], val_arrays["ids"], item_col, n_items, random_state))

        def evaluate() -> dict:
            model.eval()
            res = ranking(model, *val, item_col)
            model.train()
            return {"val_score": res["ndcg@10"], **res}

        groups = param_groups(model, lr, weight_decay)
        optimizer = make_optimizer(groups)
        steps = epochs * -(-n // batch_size)
        scheduler = linear_schedule(optimizer, steps, 0.02)
        trainable = list(model.named_parameters())
        state = train_loop(forward, n, torch.ones(n), [p for _, p in trainable], optimizer, scheduler,
                           LoopConfig(epochs=epochs, batch_size=batch_size, max_grad_norm=None, seed=random_state),
                           LoopState(), evaluate=evaluate if val is not None else None,
                           snapshot=lambda: {k: p.detach().clone() for k, p in trainable},
                           train_mode=model.train, verbose=verbose > 0)
        if state.best and state.best_epoch < state.epoch:
            with torch.no_grad():
                for k, p in trainable:
                    p.copy_(state.best[k])
    model.eval()
    from ..finetuner import Finetuner

    meta = {"format": FORMAT, "task": Finetuner._record(task), "objective": "implicit feedback, sampled negatives",
            "negatives": negatives, "log_rows": n, "max_history": task.max_history, "epochs": epochs,
            "best_epoch": state.best_epoch, "history": state.history, "fit_time_s": time.perf_counter() - t0}
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        encoder.save_pretrained(tmp)
        write_json(tmp / "pretrain.json", meta)
    return Path(out)


def eval_negatives(log_ids: torch.Tensor, val_ids: torch.Tensor, item_col: int, n_items: int, seed: int,
                   m: int = EVAL_NEGATIVES) -> torch.Tensor:
    """``m`` items per validation row the user never interacted with in the log, nor the row's own item (the NCF
    protocol), drawn uniformly; redrawn until none collides (a user with nearly every item keeps a few repeats)."""
    user_col = 0  # FeatureEncoder.fit puts the user first, the item second
    seen = np.unique(log_ids[:, user_col].numpy() * n_items + log_ids[:, item_col].numpy())
    users, own = val_ids[:, user_col].numpy(), val_ids[:, item_col].numpy()
    rng = np.random.default_rng(seed + 1)
    neg = rng.integers(2, n_items, (len(users), m))
    for _ in range(20):
        bad = np.isin(users[:, None] * n_items + neg, seen) | (neg == own[:, None])
        if not bad.any():
            break
        neg[bad] = rng.integers(2, n_items, int(bad.sum()))
    return torch.as_tensor(neg)


@torch.inference_mode()
def ranking(model, arrays: dict, negatives: torch.Tensor, item_col: int, k: int = 10,
            batch: int = 256) -> dict:
    """HR@k and NDCG@k of each row's own item against its sampled ``negatives`` (click logit minus no-click)."""
    pos, neg = [], []
    for s in range(0, len(negatives), batch):
        inputs = {key: v[s:s + batch] for key, v in arrays.items()}
        out = model(**inputs)
        pos.append((out[:, 1] - out[:, 0]).numpy())
        cand = negatives[s:s + batch]
        o = model(**_with_items(inputs, item_col, cand)).view(len(cand), cand.shape[1], 2)
        neg.append((o[..., 1] - o[..., 0]).numpy())
    return ranking_at_k(np.concatenate(pos), np.concatenate(neg), k)


def read_meta(folder) -> dict:
    return json.loads((Path(folder) / "pretrain.json").read_text())
