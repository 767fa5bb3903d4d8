"""The ``auto`` preset of a config: which backbones to fine-tune, decided by ranking them on the training rows.

Every candidate is ranked by ``tunefuse.selection.rank_backbones`` (LogME and a cross-validated linear probe on frozen
features). Its fine-tuning time is estimated from the forward pass the ranking timed: ``s`` seconds a row frozen,
measured cold, in batches of 64; a training step costs about three forward passes (forward, backward), so an epoch
over ``n`` rows costs about ``3 s n``; LP-FT adds one frozen pass for its probe. Candidates are then taken best
first while fewer than ``top_k`` are chosen and the estimates fit ``budget_s``; each row of RUN/auto.json says why
it was or was not chosen. A rerun of the same config on the same data reads the decision back instead of ranking
again (so a resumed run fits the same members).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from pathlib import Path
from typing import Callable

from .config import Config, ConfigError, MemberConfig
from .folder import RunFolder, atomic_write, write_json

STEP_COST = 3.0  # a training step over a row ~ forward + backward ~ 3 forward passes


def default_candidates(task) -> list[str]:
    """The installed registered backbones whose inputs are the task's (texts: encoders and decoders; images)."""
    from ..backbones import BACKBONES

    modalities = ("vision",) if task.name == "image-classification" else ("text", "decoder")
    if task.name == "ctr":
        raise ConfigError("auto.candidates: a CTR task has no registered backbones to rank; fix: list candidates, "
                          "e.g. [scratch]")
    out = []
    for name, b in BACKBONES.items():
        if b.modality not in modalities:
            continue
        try:
            b.locate()
        except (ValueError, OSError):  # not installed: not a default candidate (listed ones are ranked or reported)
            continue
        out.append(name)
    return out


def estimate_fit_s(per_row_s: float, n_rows: int, strategy: str, epochs: int) -> float:
    """Seconds a fine-tune of ``n_rows`` rows for ``epochs`` epochs should take, from a frozen forward pass's cost."""
    frozen = per_row_s * n_rows
    if strategy == "head":
        return frozen
    return frozen * STEP_COST * epochs + (frozen if strategy == "lp-ft" else 0.0)


def _member_name(candidate: str, taken: set) -> str:
    base = "auto-" + re.sub(r"[^A-Za-z0-9_.=-]+", "-", Path(candidate).name or candidate).strip("-.")
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def choose(run: RunFolder, cfg: Config, task, s, data_key: str, say: Callable[[str], None],
           refit: bool = True) -> list[MemberConfig]:
    """The members the ``auto`` block adds, ranked (or read back from RUN/auto.json when already decided;
    ``refit=False``, as ``tunefuse report`` runs it, only reads it back)."""
    from ..finetuner import Finetuner
    from ..selection import rank_backbones

    auto = cfg.auto
    candidates = list(dict.fromkeys(auto.candidates or default_candidates(task)))
    if not candidates:
        raise ConfigError(f"auto.candidates: no backbone for task={task.name!r} is installed; fix: list candidates, "
                          "e.g. [minilm-l6]")
    listed = sorted(m.name for m in cfg.expanded_members())
    key = hashlib.sha1(json.dumps([data_key, auto.model_dump(), candidates, cfg.seed, cfg.task, cfg.task_options,
                                   listed], default=str, sort_keys=True).encode()).hexdigest()[:16]
    record = run.path / "auto.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            say(f"auto: backbones chosen already ({', '.join(r['member'] for r in saved['rows'] if r['chosen'])})")
            return [MemberConfig(name=r["member"], backbone=r["candidate"], strategy=auto.strategy,
                                 params=_member_params(auto, r["candidate"])) for r in saved["rows"] if r["chosen"]]
    if not refit:
        raise ConfigError(f"auto: {str(run.path)!r} holds no backbone choice for the config and data its "
                          "config.yaml now reads; fix: run `tunefuse fit` to rank and fit, or `tunefuse report` from "
                          "the folder the fit ran in")
    say(f"auto: ranking {len(candidates)} candidate backbone(s) on at most {auto.max_rows} training rows ...")
    # the model that is ranked is the one that would be fine-tuned (its config_overrides, max_length, precision)
    params = {k: v for k, v in auto.params.items() if k not in ("strategy", "early_stopping", "random_state")}
    table = rank_backbones(candidates, s.X_train, s.y_train, task=task, max_rows=auto.max_rows,
                           random_state=cfg.seed, **params)
    atomic_write(run.path / "ranking.csv", table.to_csv(index=False))
    ranked = table[table["error"] == ""]
    ascending = auto.rank_by == "probe_log_loss"
    ranked = ranked.sort_values(auto.rank_by, ascending=ascending, kind="stable")
    epochs = int(auto.params.get("epochs", inspect.signature(Finetuner).parameters["epochs"].default))
    n_rows, rows_ranked = len(s.y_train), int(table.attrs["rows"])
    taken = {m.name for m in cfg.expanded_members()}
    rows, spent, chosen = [], 0.0, 0
    for rank, r in enumerate(ranked.itertuples(index=False), 1):
        est = estimate_fit_s(r.infer_ms / 1000, n_rows, auto.strategy, epochs)  # a cold forward pass a row
        score = f"{auto.rank_by} {getattr(r, auto.rank_by):.4f}, rank {rank} of {len(ranked)}"
        if chosen >= auto.top_k:
            ok, why = False, f"{score}; top_k={auto.top_k} already chosen"
        elif spent + est > auto.budget_s:
            ok, why = False, (f"{score}; its estimated {est:.0f} s of fine-tuning would take the chosen ones to "
                              f"{spent + est:.0f} s, over budget_s={auto.budget_s:.0f}")
        else:
            ok, why = True, f"{score}; estimated {est:.0f} s of fine-tuning ({spent + est:.0f} s of the budget)"
            spent, chosen = spent + est, chosen + 1
        name = _member_name(r.candidate, taken)
        taken.add(name)
        rows.append({"candidate": r.candidate, "member": name, "rank": rank, "logme": r.logme,
                     "probe_acc": r.probe_acc, "probe_log_loss": r.probe_log_loss, "rank_time_s": r.rank_time_s,
                     "params_m": r.params_m, "estimated_fit_s": est, "chosen": ok, "reason": why})
    for r in table[table["error"] != ""].itertuples(index=False):
        rows.append({"candidate": r.candidate, "member": None, "rank": None, "chosen": False,
                     "reason": f"not ranked: {r.error}"})
    if not chosen:
        cheapest = min((x["estimated_fit_s"] for x in rows if x["rank"]), default=None)
        fix = (f"raise auto.budget_s to at least {math.ceil(cheapest)}, or pick a cheaper strategy (head)"
               if cheapest is not None else "check the candidates' errors in the ranking")
        raise ConfigError(f"auto: no candidate fits budget_s={auto.budget_s:.0f} ("
                          + "; ".join(f"{x['candidate']}: {x['reason']}" for x in rows) + f"); fix: {fix}")
    write_json(record, {"key": key, "rank_by": auto.rank_by, "budget_s": auto.budget_s, "top_k": auto.top_k,
                        "strategy": auto.strategy, "rows_ranked": rows_ranked, "rows": rows})
    for x in rows:
        say(f"auto: {x['candidate']}: {'chosen' if x['chosen'] else 'not chosen'} ({x['reason']})")
    return [MemberConfig(name=x["member"], backbone=x["candidate"], strategy=auto.strategy,
                         params=_member_params(auto, x["candidate"])) for x in rows if x["chosen"]]


def _member_params(auto, candidate: str) -> dict:
    """The chosen member's parameters: the preset's, and the pooling its ranking used (a registered decoder is
    ranked on mean-pooled hidden states, so it is fine-tuned on them too)."""
    from ..selection.ranking import feature_pooling

    params = dict(auto.params)
    if feature_pooling(candidate):
        params.setdefault("pooling", feature_pooling(candidate))
    return params


def record_fit_times(run: RunFolder, members: dict) -> None:
    """Add each chosen member's measured fit time beside its estimate in RUN/auto.json."""
    record = run.path / "auto.json"
    if not record.is_file():
        return
    doc = json.loads(record.read_text())
    for r in doc["rows"]:
        m = members.get(r.get("member"))
        if m is not None and getattr(m, "fit_time_", None) is not None:
            r["fit_s"] = float(m.fit_time_)
    write_json(record, doc)


DEFAULT_FUSIONS = ("stacking", "ensemble_selection", "vote_soft")
