"""Which model to ship, and how sure we are: one verdict for the CLI, the report and the demo.

The chosen model follows the one-standard-error rule (:func:`choose`): the cheapest model whose validation score is
within one standard error of the best. Its lift over the best member is measured on the same validation rows by a
paired bootstrap (both models' predictions resampled together, so the noise they share cancels), and a lift whose
95 % interval holds zero is said to be within noise. The cost is the chosen model's inference time (and size) over
the best member's. Test figures, when there are test rows, are reported beside it, never used to choose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

N_BOOT = 1000


def paired_bootstrap(metric: Callable[[np.ndarray], tuple[float, float]] | None, n: int, *,
                     per_row_a: np.ndarray | None = None, per_row_b: np.ndarray | None = None,
                     n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(lift, low, high) of model a over model b: a 95 % percentile interval over ``n_boot`` resamples of the ``n``
    rows. ``per_row_a/b``: each row's credit (1 if right, 0 if wrong: accuracy is their mean), vectorised;
    otherwise ``metric(idx)`` returns (a's score, b's score) on the rows ``idx`` (F1, AUC, mAP)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if per_row_a is not None:
        d = np.asarray(per_row_a, float) - np.asarray(per_row_b, float)
        lift, boots = float(d.mean()), d[idx].mean(1)
    else:
        a, b = metric(np.arange(n))
        lift = a - b
        boots = np.array([np.subtract(*metric(i)) for i in idx])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return lift, float(lo), float(hi)


@dataclass
class Verdict:
    chosen: str
    kind: str
    best_member: str
    lift: float = math.nan  # chosen minus best member, validation metric
    low: float = math.nan
    high: float = math.nan
    n_val: int = 0
    cost_ratio: float = math.nan  # inference time of the chosen model / the best member's
    size_ratio: float = math.nan
    test_lift: float = math.nan
    metric: str = "score"
    rule: str = "standard-error"
    notes: list[str] = field(default_factory=list)

    @property
    def within_noise(self) -> bool:
        return not (self.low > 0 or self.high < 0) if not math.isnan(self.low) else True

    def text(self) -> str:
        """The verdict in plain language, one paragraph."""
        pts = lambda v: f"{100 * v:+.2f}"  # noqa: E731 (points of the metric)
        if self.kind == "member":
            s = f"Ship {self.chosen!r} (a single member)"
            if self.notes:
                s += ": " + "; ".join(self.notes)
            return s + "."
        notes = ("; " + "; ".join(self.notes)) if self.notes else ""
        interval = f"[{pts(self.low)}, {pts(self.high)}] 95 % paired bootstrap" if not math.isnan(self.low) else ""
        s = (f"Ship {self.chosen!r} ({self.kind}): {pts(self.lift)} points of {self.metric} over the best member "
             f"{self.best_member!r} on {self.n_val} validation rows {interval}")
        # Chosen, yet a paired interval that holds zero: what the rule established is said, not more (the paired
        # 95 % interval is a stricter test than one standard error)
        why = ("the one-standard-error rule's pick, since every member scores more than one standard error below "
               "the best model" if self.rule == "standard-error" else "the highest validation score")
        s += (f" - within noise at 95 %: {why}, not a proven lift over this member, the cheaper fallback"
              if self.within_noise else " - a real lift on these rows")
        if not math.isnan(self.cost_ratio):
            s += f"; it costs {self.cost_ratio:.1f}x the member's inference time"
        if not math.isnan(self.size_ratio):
            s += f" and {self.size_ratio:.1f}x its size on disk"
        if not math.isnan(self.test_lift):
            s += f"; on the test rows: {pts(self.test_lift)} points"
        return s + notes + "."


def verdict(board: pd.DataFrame, *, rule: str = "standard-error", val_credit: dict[str, np.ndarray] | None = None,
            val_metric: Callable[[str, np.ndarray], float] | None = None, n_val: int = 0,
            metric: str = "accuracy", n_boot: int = N_BOOT, seed: int = 0) -> Verdict:
    """The verdict on a leaderboard (members have ``kind == 'member'``): the model :func:`choose` picks by ``rule``
    against the best member by validation score. Give ``val_credit`` (name -> one credit a validation row, e.g. 1.0
    where right) when the metric is their mean, else ``val_metric(name, idx)`` (the metric of that model's
    validation predictions on rows ``idx``), to measure the lift's interval."""
    chosen = choose(board, rule)
    members = board[board["kind"] == "member"]
    in_sample = board["model"][board["val_mode"] == "in-sample"].tolist() if "val_mode" in board else []
    if members.empty:
        raise ValueError("verdict: the leaderboard has no member row (kind == 'member'); fix: include the members")
    best = members.sort_values(["val_score", "val_loss"], ascending=[False, True], kind="stable").iloc[0]
    kind = str(board.set_index("model").loc[chosen, "kind"])
    v = Verdict(chosen, kind, str(best["model"]), n_val=n_val, metric=metric, rule=rule)

    def lift_of(a: str, b: str) -> tuple[float, float, float]:
        if val_credit is not None and a in val_credit and b in val_credit:
            return paired_bootstrap(None, len(val_credit[a]), per_row_a=val_credit[a], per_row_b=val_credit[b],
                                    n_boot=n_boot, seed=seed)
        if val_metric is not None and n_val:
            return paired_bootstrap(lambda idx: (val_metric(a, idx), val_metric(b, idx)), n_val,
                                    n_boot=min(n_boot, 200), seed=seed)
        return math.nan, math.nan, math.nan

    if in_sample:
        v.notes.append(f"not considered: {in_sample}, whose validation score is in-sample (too few validation rows "
                       "to cross-fit them)")
    row = lambda name: board.set_index("model").loc[name]  # noqa: E731
    if v.kind == "member":
        fusions = board[(board["kind"] != "member") & ~board["model"].isin(in_sample)]
        if not fusions.empty:
            f = fusions.sort_values(["val_score", "val_loss"], ascending=[False, True], kind="stable").iloc[0]
            lift, lo, hi = lift_of(str(f["model"]), v.chosen)
            if not math.isnan(lift):
                why = ("within one standard error: not worth its extra inference cost" if rule == "standard-error"
                       else "ranked below it by validation score")
                v.notes.append(f"the best fusion by validation, {f['model']!r}, scores {100 * lift:+.2f} points "
                               f"[{100 * lo:+.2f}, {100 * hi:+.2f}] against it on {n_val} validation rows, {why}")
            else:
                v.notes.append(f"no fusion beats it by more than the validation noise (the best by validation is "
                               f"{f['model']!r})")
        return v
    v.lift, v.low, v.high = lift_of(v.chosen, v.best_member)
    c, b = row(v.chosen), row(v.best_member)
    for attr, col in (("cost_ratio", "predict_time_s"), ("size_ratio", "size_mb")):
        if col in board and np.isfinite(c[col]) and np.isfinite(b[col]) and b[col] > 0:
            setattr(v, attr, float(c[col] / b[col]))
    if "test_score" in board and np.isfinite(c["test_score"]) and np.isfinite(b["test_score"]):
        v.test_lift = float(c["test_score"] - b["test_score"])
    return v


def credit(y: Sequence, pred: Sequence) -> np.ndarray:
    """1.0 where a prediction equals its label: the per-row credit whose mean is accuracy."""
    return (np.asarray(pred, dtype=object) == np.asarray(y, dtype=object)).astype(float)


def choose(board: pd.DataFrame, rule: str = "standard-error") -> str:
    """The name of the model to ship by ``rule``:

    'standard-error' (the one-standard-error rule of Breiman et al., 1984, CART): among the models whose validation
    score is within one standard error of the best score, the cheapest (members before fusions, then the smaller on
    disk, then the higher score, then the name: all deterministic, so a rerun or a resumed run chooses the same;
    measured prediction times are not, and are reported, not used). A fusion is chosen only when it beats every
    member by more than the noise of the validation rows; a tie goes to the model that costs less.
    'validation': the highest validation score (ties: the lower validation log-loss).
    """
    if board.empty:
        raise ValueError("choose: the leaderboard is empty; fix: fit at least one member")
    if "val_mode" in board and (board["val_mode"] != "in-sample").any():
        board = board[board["val_mode"] != "in-sample"]  # a score on the rows a model was fitted on proves nothing
    if rule == "validation":
        b = board.sort_values(["val_score", "val_loss"], ascending=[False, True], kind="stable", na_position="last")
        return str(b.iloc[0]["model"])
    if rule != "standard-error":
        raise ValueError(f"rule={rule!r} is not valid; valid: ['standard-error', 'validation']")
    best = board.loc[board["val_score"].idxmax()]
    se = 0.0 if not np.isfinite(best.get("val_se", np.nan)) else float(best["val_se"])
    near = board[board["val_score"] >= best["val_score"] - se - 1e-12].assign(
        _fusion=lambda d: d["kind"] != "member",
        _size=lambda d: d["size_mb"].round(1).fillna(np.inf) if "size_mb" in d else 0.0)
    near = near.sort_values(["_fusion", "_size", "val_score", "model"], ascending=[True, True, False, True],
                            kind="stable")
    return str(near.iloc[0]["model"])


def format_verdict(v: Verdict) -> str:
    return "verdict: " + v.text()


__all__ = ["Verdict", "choose", "credit", "format_verdict", "paired_bootstrap", "verdict"]
