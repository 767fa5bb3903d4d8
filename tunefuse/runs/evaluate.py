"""The end of a run: every member and fusion scored on validation (fusions fitted there, cross-fitted) and test, the
leaderboard with standard errors and calibration, the test predictions, the verdict and the report.

Prediction files (``predictions/NAME.csv`` for classifiers, ``predictions/NAME.jsonl`` for every task), one row a
test example in input order: ``id`` (its 0-based position), ``prediction`` (a label; NER: the tag list; QA: the
answer text, "" for none; detection: {boxes, scores, labels}; segmentation: the mask as a list of rows), and for
classifiers ``proba_<class>`` columns (CSV) or a ``proba`` object (JSONL).
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..calibration import expected_calibration_error, fit_calibrator
from ..fusion.members import Cached
from ..fusion.verdict import credit, verdict
from .folder import RunFolder, atomic_write


FITS_NOTHING = ("vote_soft", "vote_hard", "uniform_soup")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def prediction_files(path, pred: list, proba: np.ndarray | None = None, classes: np.ndarray | None = None,
                     formats: tuple[str, ...] = ("jsonl", "csv")) -> None:
    """Write predictions as ``path``.jsonl (every task) and ``path``.csv (classifiers), atomically; the documented
    format: one row an example in input order, ``id``, ``prediction`` and the class probabilities."""
    from pathlib import Path

    path = Path(path)
    if "jsonl" in formats:
        lines = []
        for i, p in enumerate(pred):
            rec = {"id": i, "prediction": _jsonable(p)}
            if proba is not None:
                rec["proba"] = {str(c): float(v) for c, v in zip(classes, proba[i])}
            lines.append(json.dumps(rec))
        atomic_write(path.with_name(path.name + ".jsonl"), "\n".join(lines) + "\n")
    if "csv" in formats and proba is not None:
        df = pd.DataFrame({"id": np.arange(len(pred)), "prediction": list(pred)})
        for j, c in enumerate(classes):
            df[f"proba_{c}"] = proba[:, j]
        atomic_write(path.with_name(path.name + ".csv"), df.to_csv(index=False))


def write_predictions(run: RunFolder, name: str, pred: list, proba: np.ndarray | None = None,
                      classes: np.ndarray | None = None, folder: str = "predictions") -> None:
    prediction_files(run.path / folder / name, pred, proba, classes)


def _bootstrap_se(metric: Callable[[np.ndarray], float], n: int, n_boot: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    vals = [metric(rng.integers(0, n, n)) for _ in range(n_boot)]
    return float(np.nanstd(vals))


def _classifier_board(cfg, task, models, in_sample, s, say):
    from ..fusion import cross_val_fusion, leaderboard

    metric = "roc_auc" if task.name == "ctr" else "accuracy"
    cv = {}
    smallest = int(np.unique(np.asarray(s.y_val).astype(str), return_counts=True)[1].min())
    folds = min(5, smallest)
    for name in in_sample:
        if folds < 2:  # a class with one validation row cannot be stratified: the fusion's score stays in-sample
            say(f"{name}: a class has 1 validation row, too few to cross-fit; its validation score is in-sample "
                "(optimistic)")
            continue
        say(f"cross-fitting {name} on the validation rows ({folds} folds) for an honest validation score ...")
        try:
            cv[name] = cross_val_fusion(models[name], s.X_val, s.y_val, n_splits=folds, random_state=cfg.seed)
        except ValueError as e:  # e.g. a stacker's own inner folds do not fit into a fold of a small validation set
            say(f"{name}: cannot be cross-fitted on {len(s.y_val)} validation rows ({' '.join(str(e).split())[:120]});"
                " its validation score is in-sample (optimistic)")
    # every model predicts each split once (members are Cached already): the leaderboard times that call, the
    # calibration, predictions and report replay it
    models = {n: m if isinstance(m, Cached) else Cached(m) for n, m in models.items()}
    has_test = s.X_test is not None and s.y_test is not None
    board = leaderboard(models, s.X_val, s.y_val, s.X_test if has_test else None, s.y_test if has_test else None,
                        metric=metric, val_proba=cv)
    val_proba = {n: np.asarray(cv[n]) if n in cv else np.asarray(m.predict_proba(s.X_val)) for n, m in models.items()}
    test_proba = {n: np.asarray(m.predict_proba(s.X_test)) for n, m in models.items()} if s.X_test is not None else {}
    classes = {n: np.asarray(m.classes_) for n, m in models.items()}
    yv = np.asarray(s.y_val)
    y_idx = {n: np.searchsorted(classes[n], yv) for n in models}
    # calibration: temperature (CTR: isotonic) fitted on the validation probabilities; ECE before and after on test,
    # or, without labelled test rows, on the validation rows by 5-fold cross-fitting of the calibrator
    method = "isotonic" if task.name == "ctr" else "temperature"
    ece, ece_cal, calibrators = {}, {}, {}
    for n in models:
        known = np.isin(yv, classes[n])
        calibrators[n] = fit_calibrator(val_proba[n][known], y_idx[n][known], method)
        if has_test:
            yt = np.searchsorted(classes[n], np.asarray(s.y_test))
            ok = np.isin(np.asarray(s.y_test), classes[n])
            ece[n] = expected_calibration_error(test_proba[n][ok], yt[ok])
            ece_cal[n] = expected_calibration_error(calibrators[n](test_proba[n][ok]), yt[ok])
        else:
            from sklearn.model_selection import KFold

            p, yi = val_proba[n][known], y_idx[n][known]
            ece[n], ece_cal[n] = expected_calibration_error(p, yi), math.nan
            if len(p) >= 4:
                out = np.zeros_like(p)
                for tr, te in KFold(min(5, len(p)), shuffle=True, random_state=cfg.seed).split(p):
                    out[te] = fit_calibrator(p[tr], yi[tr], method)(p[te])
                ece_cal[n] = expected_calibration_error(out, yi)
    board.insert(4, "val_mode", [("cross-fitted" if n in cv else "in-sample") if n in in_sample else "held-out"
                                 for n in board["model"]])
    board["ece"] = board["model"].map(ece)
    board[f"ece_{method}"] = board["model"].map(ece_cal)
    if metric == "accuracy":
        cred = {n: credit(yv, classes[n][val_proba[n].argmax(1)]) for n in models}
        v = verdict(board, rule=cfg.selection, val_credit=cred, n_val=len(yv), metric=metric, seed=cfg.seed)
    else:
        from ..ctr.metrics import auc

        v = verdict(board, rule=cfg.selection, val_metric=lambda n, idx: auc(yv[idx], val_proba[n][idx, 1]),
                    n_val=len(yv), metric="AUC", seed=cfg.seed)
    extra = {"val_proba": val_proba, "test_proba": test_proba, "classes": classes, "calibrators": calibrators,
             "calibration": method, "metric": metric}
    preds = {n: classes[n][p.argmax(1)] for n, p in test_proba.items()}
    return board, v, preds, extra


def _structured_board(cfg, task, models, in_sample, s, say):
    from ..fusion import cross_val_fusion
    from ..fusion.leaderboard import COLUMNS, size_mb, sort_leaderboard

    Xv = task.check_X(s.X_val)
    yv = task.check_y(s.y_val, Xv)
    has_test = s.X_test is not None
    Xt = task.check_X(s.X_test) if has_test else None
    yt = task.check_y(s.y_test, Xt) if has_test and (s.y_test is not None or task.name == "question-answering") \
        else None
    rows, val_pred, test_pred = [], {}, {}
    for name, raw in models.items():
        m = raw if isinstance(raw, Cached) else Cached(raw)
        labels = getattr(m, "labels_", None)
        if name in in_sample and len(Xv) >= 2:
            folds = min(5, len(Xv))
            say(f"cross-fitting {name} on the validation rows ({folds} folds) for an honest validation score ...")
            # decoded by the fusion's own task entry: it carries what validation tuned (QA's no-answer threshold)
            own = getattr(m, "task_", None) or task
            val_pred[name] = own.decode(Xv, cross_val_fusion(raw, Xv, yv, n_splits=folds, random_state=cfg.seed),
                                        labels)
        else:
            val_pred[name] = m.predict(Xv)
        score = lambda idx, p=val_pred[name]: task.metric([yv[i] for i in idx], [p[i] for i in idx])  # noqa: E731
        val_score = score(np.arange(len(Xv)))
        t_pred, test_score = math.nan, math.nan
        if has_test:
            t0 = time.perf_counter()
            test_pred[name] = m.predict(Xt)
            t_pred = time.perf_counter() - t0
            if yt is not None:
                test_score = task.metric(yt, test_pred[name])
        fused = hasattr(m, "weights_")
        inner = getattr(m, "estimator", m) if fused else m
        rows.append({"model": name, "kind": type(inner).__name__ if fused else "member", "val_score": val_score,
                     "val_se": _bootstrap_se(score, len(Xv), seed=cfg.seed), "val_loss": math.nan,
                     "test_score": test_score, "fit_time_s": float(getattr(m, "fit_time_", math.nan)),
                     "predict_time_s": t_pred, "size_mb": size_mb(m),
                     "weights": " ".join(f"{k}:{w:.2f}" for k, w in m.weights_.items()) if fused else ""})
    board = sort_leaderboard(pd.DataFrame(rows, columns=COLUMNS))
    board.insert(4, "val_mode", [("cross-fitted" if len(Xv) >= 2 else "in-sample") if n in in_sample else "held-out"
                                 for n in board["model"]])

    def val_metric(name, idx):
        p = val_pred[name]
        return task.metric([yv[i] for i in idx], [p[i] for i in idx])

    v = verdict(board, rule=cfg.selection, val_metric=val_metric, n_val=len(Xv),
                metric=getattr(task, "metric_name", "the task metric"), seed=cfg.seed)
    return board, v, test_pred, {"val_pred": val_pred, "test_pred": test_pred, "X_val": Xv, "y_val": yv,
                                   "X_test": Xt, "y_test": yt, "metric": "the task metric"}


def save_fusions(run: RunFolder, cfg, fusions: dict, members: dict) -> None:
    """Each fusion into RUN/fusions/NAME/model (members by reference, not copied; a soup is one model) with a
    fusion.json record, so ``predict``, ``evaluate`` and ``serve`` open any model of the run."""
    from ..fusion.output import _Fusion
    from ..fusion.persist import save_fusion
    from .experiment import TRAINING_FUSIONS
    from .folder import write_json

    method_of = {cfg.fusion_name(f): f.method for f in cfg.fusions}
    for name, f in fusions.items():
        folder = run.fusion(name)
        if method_of[name] not in TRAINING_FUSIONS:  # bagging and boosting were saved when fitted
            if isinstance(f, _Fusion):
                save_fusion(f, folder / "model", member_refs={n: run.member(n) for n in members})
            else:
                f.save(folder / "model")
        write_json(folder / "fusion.json", {"name": name, "method": method_of[name],
                                            "weights": getattr(f, "weights_", {}),
                                            "fit_time_s": getattr(f, "fit_time_", None)})


def load_model(run: RunFolder, name: str):
    """A member or fusion of a run folder by name."""
    from ..finetuner import Finetuner
    from ..fusion.persist import load_fusion, load_member
    from .config import ConfigError

    member, fusion = run.resolve_inside(f"members/{name}"), run.resolve_inside(f"fusions/{name}")
    try:
        if (member / "member.json").is_file():
            return load_member(member)
        if (fusion / "model" / "fusion.json").is_file():
            return load_fusion(fusion / "model")
        if (fusion / "model" / "tunefuse.json").is_file():
            return Finetuner.load(fusion / "model")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file (a truncated safetensors, bad JSON) is the run's, not ours
        why = " ".join(str(e).split())[:160]
        raise ConfigError(f"model {name!r} of {str(run.path)!r} cannot be loaded: its files are damaged "
                          f"({type(e).__name__}: {why}); fix: delete members/{name} (or fusions/{name}) and run "
                          "`tunefuse fit` on the run's config.yaml again to refit it") from None
    names = sorted([p.name for p in (run.path / "members").glob("*") if (p / "member.json").is_file()] +
                   [p.name for p in (run.path / "fusions").glob("*") if (p / "model").is_dir()])
    from .config import closest

    raise ConfigError(f"--model {name!r} is not a fitted model of {str(run.path)!r}; valid: {names}"
                      f"{closest(name, names)}; fix: pick one of them (leaderboard.csv ranks them)")


def evaluate_run(run: RunFolder, cfg, task, members: dict, fusions: dict, s, say):
    """Score, rank, predict, calibrate, judge and report; writes leaderboard.csv, predictions/, verdict.txt,
    report.html. Returns (board, verdict, extras)."""
    from .experiment import TRAINING_FUSIONS

    models = {**members, **fusions}
    method_of = {cfg.fusion_name(f): f.method for f in cfg.fusions}
    # fusions that fit something on the validation rows (weights, a meta-learner, a soup's recipe) are scored there
    # by cross-fitting; a plain vote or a uniform soup fits nothing, so its validation score is held-out as it is
    in_sample = [n for n in fusions if method_of[n] not in TRAINING_FUSIONS + FITS_NOTHING]
    build = _classifier_board if task.is_classifier else _structured_board
    board, v, preds, extra = build(cfg, task, models, in_sample, s, say)
    atomic_write(run.path / "leaderboard.csv", board.to_csv(index=False))
    for name, pred in preds.items():
        proba = extra.get("test_proba", {}).get(name)
        write_predictions(run, name, list(pred), proba, extra.get("classes", {}).get(name))
    if "calibrators" in extra:
        atomic_write(run.path / "calibration.json", json.dumps(
            {n: c.to_json() for n, c in extra["calibrators"].items()}, indent=2))
    atomic_write(run.path / "verdict.txt", v.text() + "\n")
    save_fusions(run, cfg, fusions, members)
    run.log({"event": "leaderboard", "rows": json.loads(board.to_json(orient="records"))})
    from ..fusion import format_leaderboard

    say("\n" + format_leaderboard(board.drop(columns=["weights"])))
    say("\nverdict: " + v.text())
    from .html import write_html_report

    path = write_html_report(run, cfg, task, board, v, models, s, extra)
    say(f"report: {path}")
    return board, v, extra


def write_prediction_file(path, task, est, X) -> None:
    """Predictions of ``est`` on ``X`` into ``path`` (.csv for classifiers, .jsonl for every task), atomically."""
    from pathlib import Path

    path = Path(path)
    if task.is_classifier:
        proba = np.asarray(est.predict_proba(X))
        classes = np.asarray(est.classes_)
        pred = classes[proba.argmax(1)]
    else:
        proba, classes, pred = None, None, est.predict(task.check_X(X))
    if path.suffix == ".csv" and proba is None:
        raise ValueError(f"--out {str(path)!r}: {task.name} predictions are structured (tags, spans, boxes); fix: "
                         "write them as .jsonl")
    prediction_files(path.with_suffix(""), list(pred), proba, classes, formats=(path.suffix[1:],))


def score_models(run: RunFolder, task, X, y, names=None) -> pd.DataFrame:
    """The task metric of a run's models (default: every member and fusion) on labelled ``X, y``."""
    from ..calibration import expected_calibration_error

    if names is None:
        names = [p.name for p in sorted((run.path / "members").glob("*")) if (p / "member.json").is_file()]
        names += [p.name for p in sorted((run.path / "fusions").glob("*")) if (p / "model").is_dir()]
    rows = []
    for name in names:
        m = load_model(run, name)
        row = {"model": name}
        if task.is_classifier:
            proba = np.asarray(m.predict_proba(X))
            classes = np.asarray(m.classes_)
            yv = np.asarray(y)
            if task.name == "ctr":
                from ..ctr.metrics import auc

                row["auc"] = auc(yv, proba[:, 1])
            row["accuracy"] = float(np.mean(classes[proba.argmax(1)] == yv))
            known = np.isin(yv, classes)
            row["ece"] = expected_calibration_error(proba[known], np.searchsorted(classes, yv[known]))
        else:
            Xc = task.check_X(X)
            row["score"] = task.metric(task.check_y(y, Xc), m.predict(Xc))
        rows.append(row)
    return pd.DataFrame(rows)
