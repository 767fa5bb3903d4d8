"""LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning").

The log marginal likelihood (evidence) of the labels under a Bayesian linear model on frozen features,
``y = F w + e``, ``w ~ N(0, 1/alpha I)``, ``e ~ N(0, 1/beta I)``, with alpha and beta maximised by MacKay's fixed
point; averaged over the one-hot columns of a classification target and divided by the number of rows. Higher is
better; it needs no training and no hyperparameter. No maintained package provides it, so it is written here from
the paper's equations: one thin SVD of F, then each iteration costs O(min(N, D)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Evidence:
    """One target column's maximised evidence (per row) and the alpha, beta that maximise it."""

    evidence: float
    alpha: float
    beta: float
    iterations: int


def _column(s2: np.ndarray, x2: np.ndarray, rest: float, n: int, d: int, max_iter: int, tol: float) -> Evidence:
    """MacKay's fixed point in the SVD basis. ``s2``: squared singular values (r of them), ``x2``: the target's squared
    coordinates on the left singular vectors, ``rest``: its squared norm outside their span."""
    alpha, beta = 1.0, 1.0
    for it in range(1, max_iter + 1):
        t = alpha / beta
        gamma = float(np.sum(s2 / (s2 + t)))  # effective number of well-determined weights
        m2 = float(np.sum(s2 * x2 / (s2 + t) ** 2))  # |posterior mean|^2
        res2 = float(np.sum(x2 * (t / (s2 + t)) ** 2)) + rest  # |y - F m|^2
        alpha = gamma / max(m2, 1e-12)
        beta = (n - gamma) / max(res2, 1e-12)
        if abs(alpha / beta - t) / t < tol:
            break
    t = alpha / beta  # the evidence at the final (alpha, beta), its terms recomputed there
    m2 = float(np.sum(s2 * x2 / (s2 + t) ** 2))
    res2 = float(np.sum(x2 * (t / (s2 + t)) ** 2)) + rest
    logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * np.log(alpha)  # log|alpha I + beta F'F|
    ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
          - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
    return Evidence(float(ev / n), float(alpha), float(beta), it)


def logme_columns(features, targets, *, max_iter: int = 100, tol: float = 1e-3) -> list[Evidence]:
    """The maximised evidence of each column of ``targets`` (N, K) given ``features`` (N, D)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise ValueError(f"LogME needs features (N, D) and targets of N rows, N >= 2; got {f.shape} and {y.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("LogME: the features hold NaN or inf; fix: check the backbone's output (precision, overflow)")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    if s.max(initial=0) == 0:
        raise ValueError("LogME: the features are all zero; fix: check the backbone's output")
    keep = s > s.max() * 1e-10  # drop directions the features do not span
    u, s2 = u[:, keep], s[keep] ** 2
    if n <= len(s2):  # y lies in the features' span: the evidence has no interior maximum (beta runs to infinity)
        raise ValueError(f"LogME needs more rows than the features' rank: {n} rows, rank {len(s2)} (dimensions {d}); "
                         f"fix: score on more than {len(s2)} labelled rows (max_rows), or on a shallower feature")
    out = []
    for k in range(y.shape[1]):
        x = u.T @ y[:, k]
        rest = max(float(y[:, k] @ y[:, k] - x @ x), 0.0)
        out.append(_column(s2, x * x, rest, n, d, max_iter, tol))
    return out


def logme(features, y, *, regression: bool = False) -> float:
    """LogME of ``features`` (N, D) for labels ``y`` (N,): the mean over the one-hot label columns (classification)
    or over the target columns (``regression=True``) of the maximised evidence per row."""
    y = np.asarray(y)
    if regression:
        targets = y.astype(np.float64)
    else:
        classes, idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"LogME needs at least 2 classes in y; got {len(classes)}; fix: pass labelled rows of "
                             "every class")
        targets = np.eye(len(classes))[idx.ravel()]
    return float(np.mean([e.evidence for e in logme_columns(features, targets)]))
