"""CTR and behaviour-prediction metrics: AUC, per-user AUC (GAUC), log-loss, calibration, HR@k and NDCG@k.

AUC and log-loss are scikit-learn's; GAUC, calibration bins and the sampled-negative ranking metrics are a few lines
that no maintained library ships in this form.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss as _sk_log_loss
from sklearn.metrics import roc_auc_score


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y).ravel(), np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y has {len(y)} labels but p {len(p)} probabilities; fix: pass one probability per row")
    return y, p


def auc(y, p, sample_weight=None) -> float:
    """Area under the ROC curve of click probabilities ``p`` (NaN when ``y`` holds one class only)."""
    y, p = _check(y, p)
    return float(roc_auc_score(y, p, sample_weight=sample_weight)) if len(np.unique(y)) == 2 else float("nan")


def gauc(y, p, users) -> float:
    """Impression-weighted mean of per-user AUCs (Zhou et al., 2018, DIN), over users with clicks and non-clicks:
    how well a model ranks items *within* a user, which a global AUC mixes with ranking users by their click rate."""
    y, p = _check(y, p)
    users = np.asarray(users).ravel()
    total, weight = 0.0, 0
    for idx in _groups(users):
        yu = y[idx]
        if 0 < yu.sum() < len(yu):
            total += len(idx) * roc_auc_score(yu, p[idx])
            weight += len(idx)
    return total / weight if weight else float("nan")


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")
    cuts = np.flatnonzero(keys[order][1:] != keys[order][:-1]) + 1
    return np.split(order, cuts)


def log_loss(y, p) -> float:
    y, p = _check(y, p)
    return float(_sk_log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))


def calibration(y, p, bins: int = 10) -> dict:
    """Predicted against observed CTR: per equal-count bin of ``p``, the mean prediction and the observed click rate;
    ``ece`` (their weighted absolute gap) and ``ratio`` (mean prediction / observed CTR: 1 is calibrated overall)."""
    y, p = _check(y, p)
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, len(p))) if len(c)]
    predicted = np.array([p[c].mean() for c in chunks])
    observed = np.array([y[c].mean() for c in chunks])
    sizes = np.array([len(c) for c in chunks])
    return {"predicted": predicted, "observed": observed, "count": sizes,
            "ece": float(np.sum(sizes * np.abs(predicted - observed)) / len(p)),
            "ratio": float(p.mean() / max(y.mean(), 1e-12))}


def ranking_at_k(positive: np.ndarray, negatives: np.ndarray, k: int = 10) -> dict:
    """HR@k and NDCG@k of each positive's score against its row of sampled negatives' scores (He et al., 2017,
    NCF protocol; ties count against the positive). ``positive`` (n,), ``negatives`` (n, m)."""
    positive, negatives = np.asarray(positive, dtype=float), np.asarray(negatives, dtype=float)
    rank = (negatives >= positive[:, None]).sum(1)  # 0: the positive is first
    hit = rank < k
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(np.where(hit, 1 / np.log2(rank + 2), 0).mean())}


def report(y, p, users=None) -> dict:
    """AUC, GAUC (with ``users``), log-loss and calibration of one model's click probabilities."""
    out = {"auc": auc(y, p), "log_loss": log_loss(y, p)}
    if users is not None:
        out["gauc"] = gauc(y, p, users)
    cal = calibration(y, p)
    out.update(ece=cal["ece"], calibration_ratio=cal["ratio"])
    return out
