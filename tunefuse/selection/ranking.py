"""Rank candidate backbones on the user's labelled data before fine-tuning any of them.

For each candidate (a registered name, a folder, a hub id, or a dict of ``Finetuner`` parameters such as a shallower
``config_overrides={"num_hidden_layers": 2}``), the frozen backbone's per-example features of at most ``max_rows``
labelled rows are computed once (tunefuse's shared feature cache: the head-only fit of the same backbone reuses them),
then scored by LogME (no training) and by a cross-validated logistic-regression probe (accuracy and log-loss of its
out-of-fold predictions). How well these rankings predict the fine-tuned order is measured by
``bench/select_backbone.py``.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from .logme import logme

PER_EXAMPLE = ("text-classification", "image-classification", "ctr")


def _spec(candidate: Any) -> tuple[str, dict]:
    if isinstance(candidate, str):
        return candidate, {"backbone": candidate}
    if isinstance(candidate, dict) and "backbone" in candidate:
        params = {k: v for k, v in candidate.items() if k != "name"}
        over = params.get("config_overrides") or {}
        layers, depth = over.get("num_hidden_layers"), over.get("depth")
        return candidate.get("name") or (params["backbone"] + (f"@{layers}L" if layers else "")
                                         + (f"@{depth}" if depth else "")), params
    raise ValueError(f"candidate {candidate!r} must be a backbone name, a folder, a hub id, or a dict with a "
                     "'backbone' key and Finetuner parameters, e.g. {'backbone': 'minilm-l6', 'config_overrides': "
                     "{'num_hidden_layers': 2}}")


def feature_pooling(backbone) -> str | None:
    """The pooling a candidate is ranked with when none is given: a registered decoder's per-example feature is its
    mean-pooled hidden states; None: the backbone's own."""
    from ..backbones import BACKBONES

    entry = BACKBONES.get(backbone) if isinstance(backbone, str) else None
    return "mean" if entry is not None and entry.modality == "decoder" else None


def _subsample(X, y, max_rows: int, random_state: int):
    """At most ``max_rows`` rows, stratified by label, in a seeded order."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    if len(y) <= max_rows:
        return X, y
    idx, _ = train_test_split(np.arange(len(y)), train_size=max_rows, random_state=random_state, stratify=y)
    idx = np.sort(idx)
    return (X.iloc[idx] if hasattr(X, "iloc") else [X[i] for i in idx]), y[idx]


def probe_scores(features: np.ndarray, y, *, cv: int = 5, random_state: int = 0) -> tuple[float, float]:
    """Out-of-fold accuracy and log-loss of a standardised logistic-regression probe on frozen ``features``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y)
    folds = StratifiedKFold(min(cv, int(np.unique(y, return_counts=True)[1].min())), shuffle=True,
                            random_state=random_state)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    proba = cross_val_predict(probe, features, y, cv=folds, method="predict_proba")
    classes = np.unique(y)
    return float((classes[proba.argmax(1)] == y).mean()), float(log_loss(y, proba, labels=classes))


def rank_backbones(candidates, X, y, *, task: str = "text-classification", max_rows: int = 2000, cv: int = 5,
                   random_state: int = 0, verbose: int = 0, **params) -> pd.DataFrame:
    """A table, best LogME first: candidate, logme, probe_acc, probe_log_loss (out-of-fold), rank_time_s (features +
    LogME + probe; features_s and logme_s of it), params_m, infer_ms (a fresh frozen forward pass per example, in a
    batch of 64), dims, licence, error (why a candidate that failed to load or score has no scores: it is listed
    last, the others are still ranked). ``params``: Finetuner parameters for every candidate (max_length,
    precision, ...).
    Tasks without a per-example feature (NER, QA, segmentation, detection) are refused: rank their backbones on a
    sentence or image classification task of the same data."""
    from ..backbones import BACKBONES
    from ..tasks import get_task

    entry = get_task(task) if isinstance(task, str) else task  # a name, or a configured task (CTR's columns)
    if entry.name not in PER_EXAMPLE:
        raise ValueError(f"rank_backbones(task={entry.name!r}): transferability needs one feature vector per example, "
                         f"which {entry.name} has not (it labels tokens, spans, pixels or boxes); it applies to "
                         f"{', '.join(PER_EXAMPLE)}; fix: rank on a classification task of the same inputs, or "
                         "fine-tune the candidates")
    if not candidates:
        raise ValueError("rank_backbones needs at least one candidate; fix: e.g. ['minilm-l6', 'mpnet-base']")
    Xs, ys = _subsample(X, y, max_rows, random_state)
    if len(np.unique(ys)) < 2:
        raise ValueError("rank_backbones needs labelled rows of at least 2 classes; fix: pass more rows")
    rows, seen = [], set()
    for candidate in candidates:
        name, spec = _spec(candidate)
        if name in seen:
            raise ValueError(f"candidate name {name!r} appears twice; fix: give each dict candidate a 'name'")
        seen.add(name)
        registered = BACKBONES.get(spec["backbone"]) if isinstance(spec["backbone"], str) else None
        try:
            row = _score(name, spec, registered, entry, Xs, ys, cv, random_state, verbose, params)
        except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
            # a candidate that cannot be loaded or scored is reported in the table; the others are still ranked
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            if verbose:
                print(f"  {name}: not ranked ({reason})", flush=True)
            row = {"candidate": name, "error": reason}
        rows.append(row)
        if verbose and "error" not in row:
            print(f"  {name}: LogME {row['logme']:.4f}, probe {row['probe_acc']:.4f} ({row['rank_time_s']:.1f} s)",
                  flush=True)
    if all("error" in r for r in rows):
        raise ValueError("rank_backbones: no candidate could be ranked: " + "; ".join(
            f"{r['candidate']}: {r['error']}" for r in rows) + "; fix: as each reason says (install or correct the "
            "backbone, or score on more rows than the features' dimensions with max_rows)")
    columns = ["candidate", "logme", "probe_acc", "probe_log_loss", "rank_time_s", "logme_s", "params_m",
               "features_s", "infer_ms", "dims", "licence", "error"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    table["error"] = [e if isinstance(e, str) else "" for e in table["error"]]
    table = table.sort_values("logme", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    table.attrs["rows"] = len(ys)
    return table


def _score(name, spec, registered, entry, Xs, ys, cv, random_state, verbose, params) -> dict:
    """One candidate's row: frozen features of the rows, LogME, the probe's out-of-fold scores, inference cost."""
    from .. import features
    from ..finetuner import Finetuner

    pooled = feature_pooling(spec["backbone"])
    extra = {"pooling": pooled} if pooled and "pooling" not in {**params, **spec} else {}
    est = Finetuner(**{"task": entry, "random_state": random_state, "verbose": verbose, **extra, **params, **spec,
                       "strategy": "head", "early_stopping": False})
    t0 = time.perf_counter()
    est.fit(Xs, ys)  # computes the frozen features once (cached); the head-only probe on them is cheap
    feats = est.features(Xs)
    t_feat = time.perf_counter() - t0
    t1 = time.perf_counter()
    score = logme(feats, ys)
    t_logme = time.perf_counter() - t1
    acc, loss = probe_scores(feats, ys, cv=cv, random_state=random_state)
    rank_time = time.perf_counter() - t0
    sample = Xs.iloc[:64] if hasattr(Xs, "iloc") else Xs[:64]
    with features.cold():  # inference cost: a fresh forward pass of 64 rows, not a cache hit
        t2 = time.perf_counter()
        est.features(sample)
        infer_ms = 1000 * (time.perf_counter() - t2) / len(sample)
    n_params = sum(p.numel() for p in est.model_.parameters()) / 1e6
    return {"candidate": name, "logme": score, "probe_acc": acc, "probe_log_loss": loss, "rank_time_s": rank_time,
            "logme_s": t_logme, "params_m": round(n_params, 1), "features_s": t_feat, "infer_ms": infer_ms,
            "dims": feats.shape[1], "licence": registered.license if registered else "see the model card"}
