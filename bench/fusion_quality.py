"""Every fusion against the best single member, Hugging Face's Trainer and TF-IDF, on the reviews task.

2,000 labelled reviews (Rating >= 4), two protocols side by side. Held-out: members train on 1,600 and every
fusion fits its weights, meta-learner, soup order, alpha or scale on the other 400 (validation); its validation
score is 5-fold cross-fitted over those 400 rows, since its own score there would be in-sample. Cross-fitted
(AutoGluon's bagging and stacking): four configurations are 5-fold bags over all 2,000 rows, and the fusions over
them fit on the bags' out-of-fold predictions, their validation scores out-of-fold as well. Members come from two
backbone families: MiniLM-L6 (an encoder, fine-tuned) and SmolLM2-135M (a decoder, read frozen). Test: the last 4,000
reviews. The best fusion and the best member are both chosen by validation score less one standard error (the
held-out fusions' scores rest on 400 rows, the cross-fitted ones on 2,000; ties: validation log-loss), never by
test score.

    python bench/fusion_quality.py                       # about 3 hours on 2 cores; a rerun reuses the members
    python bench/fusion_quality.py --train 400 --test 400 --epochs 1   # a quick look

Fitted members and bags are saved under ``--run-dir`` (safetensors + JSON) and reloaded by a rerun whose
parameters and data split match, so changing a fusion does not cost the members again; ``--fresh`` refits them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.baselines import tfidf_logreg  # noqa: E402
from tunefuse.fusion import (Bagging, Boosting, Distillation, EnsembleSelection, Stacking, Voting,  # noqa: E402
                             WeightFusion, cross_val_fusion, format_leaderboard, leaderboard, load_fusion,
                             save_fusion)
from tunefuse.fusion.leaderboard import sort_leaderboard  # noqa: E402
from tunefuse.fusion.members import cached  # noqa: E402


def members_spec(epochs: int) -> dict[str, Finetuner]:
    """Eight fine-tuned MiniLM members (different seeds, learning rates and strategies) and a SmolLM2 probe.

    The five LP-FT members are the soup recipe (Wortsman et al., 2022 soup a hyper-parameter sweep of one recipe):
    they share the pretrained backbone and, because the L-BFGS probe is deterministic, the same probed head, so
    they fine-tune from one start and stay averageable. Full, LoRA and head-only members add diversity for the
    output-space fusions.
    """
    kw = dict(epochs=epochs, verbose=0)
    return {
        "lpft_s0_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=0, lr=3e-5, **kw),
        "lpft_s1_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=1, lr=3e-5, **kw),
        "lpft_s2_lr5e-5": Finetuner("minilm-l6", "lp-ft", random_state=2, lr=5e-5, **kw),
        "lpft_s6_lr4e-5": Finetuner("minilm-l6", "lp-ft", random_state=6, lr=4e-5, **kw),
        "lpft_s7_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=7, lr=3e-5, **kw),
        "full_s3_lr5e-5": Finetuner("minilm-l6", "full", random_state=3, lr=5e-5, **kw),
        "lora_s4_lr5e-4": Finetuner("minilm-l6", "lora", random_state=4, lr=5e-4, **kw),
        "head_s5": Finetuner("minilm-l6", "head", random_state=5, **kw),
        "smol_head": smol_head(**kw),
    }


# A second backbone family, for errors less correlated with MiniLM's: SmolLM2-135M (a decoder) read frozen, its first
# 20 of 30 layers mean-pooled over a prompted review, with a linear head. Mid-depth features of decoders probe better
# than the last layer (bench/experiments/smollm2_layers.py, 2,000 labelled rows, 5-fold logistic regression:
# layer 20 0.8985, layer 30 0.880) and 20 layers cost two thirds of the forward pass. Head-only: fine-tuning 135 M
# parameters at ~7 s a step would not fit this run, and frozen features are computed once for every member and fold
# model that reads them. The probe reads standardised features (bench/results/smollm2_probe.txt: 0.8905 raw, 0.8955
# standardised out-of-fold).
REVIEW_PROMPT = 'Review of a clothing item: "{text}"\nDid the customer like the item?'


def smol_head(**kw) -> Finetuner:
    return Finetuner("smollm2-135m", "head", random_state=8, pooling="mean", template=REVIEW_PROMPT,
                     probe_standardize=True, config_overrides={"num_hidden_layers": 20}, **kw)


def crossfit_spec(epochs: int) -> dict[str, Finetuner]:
    """Configurations cross-fitted as 5-fold bags on all 2,000 labelled rows (AutoGluon's bagging).

    Each fold model trains on 1,600 rows, as the members above, and stops early on its held-out fold; the bag
    predicts with the mean of its five fold models, and its out-of-fold predictions cover every labelled row, so
    the fusions over bags fit on 2,000 rows instead of 400 and every labelled row also trains a member.
    """
    kw = dict(epochs=epochs, verbose=0)
    return {
        "cv5_lpft_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=0, lr=3e-5, **kw),
        "cv5_full_lr5e-5": Finetuner("minilm-l6", "full", random_state=3, lr=5e-5, **kw),
        "cv5_full_lr3e-5": Finetuner("minilm-l6", "full", random_state=5, lr=3e-5, **kw),
        "cv5_lora_lr5e-4": Finetuner("minilm-l6", "lora", random_state=4, lr=5e-4, **kw),
        "cv5_smol_head": smol_head(**kw),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--unlabeled", type=int, default=2000, help="extra unlabelled reviews for the student")
    ap.add_argument("--student-epochs", type=int, default=2)
    ap.add_argument("--run-dir", default="runs/bench_fusion_quality", help="where fitted members are kept")
    ap.add_argument("--fresh", action="store_true", help="refit the members even if saved ones match")
    ap.add_argument("--skip-hf", action="store_true", help="leave out the Trainer row")
    ap.add_argument("--folds", type=int, default=5, help="folds of the cross-fitted bags")
    ap.add_argument("--members-only", action="store_true", help="fit (or load) the members and bags, then stop")
    args = ap.parse_args()

    X, y, Xt, yt = load_reviews(args.train, args.test)
    pool, _, _, _ = load_reviews(args.train + args.unlabeled, args.test)  # same shuffle: rows after the train ones
    X_unlabeled = pool.iloc[args.train:]
    Xtr, ytr, Xva, yva = held_out_split(X, y)
    print(f"reviews: {len(Xtr)} train, {len(Xva)} validation, {len(Xt)} test, {len(X_unlabeled)} unlabelled; "
          f"majority {max(yt.mean(), 1 - yt.mean()):.4f}", flush=True)

    fitted: dict[str, object] = {}
    # Keyed by the exact rows: another split gets other members.
    run_dir = Path(args.run_dir) / f"train{len(Xtr)}_val{len(Xva)}_{digest(Xtr, ytr, Xva)}"
    for name, est in members_spec(args.epochs).items():
        fitted[name], how = fit_or_load(est, run_dir / "members" / name, args.fresh, Xtr, ytr, Xva, yva)
        print(f"  member {name}: {how}, fit {fitted[name].fit_time_:.0f} s", flush=True)
    cv_dir = Path(args.run_dir) / f"cv{args.folds}_train{len(X)}_{digest(X, y)}"
    bags: dict[str, Bagging] = {}
    for name, est in crossfit_spec(args.epochs).items():
        bag = Bagging(est, mode="kfold", n_splits=args.folds, fold_validation=True)
        bags[name], how = fit_or_load(bag, cv_dir / name, args.fresh, X, y)
        print(f"  bag {name}: {how}, fit {bags[name].fit_time_:.0f} s, out-of-fold acc {bags[name].oof_score_:.4f}",
              flush=True)
    # How alike the bags' mistakes are: a fusion gains most from members whose errors differ
    wrong = {name: (bag.classes_[bag.oof_proba_.argmax(1)] != y).astype(float) for name, bag in bags.items()}
    for name, w in wrong.items():
        print(f"  out-of-fold error correlation of {name}: " + ", ".join(
            f"{other} {np.corrcoef(w, v)[0, 1]:.2f}" for other, v in wrong.items() if other != name), flush=True)
    if args.members_only:
        return
    tuned = list(fitted.items())
    recipe = [(n, m) for n, m in tuned if n.startswith("lpft")]  # the soup recipe: one strategy, one probed start
    minilm = [(n, m) for n, m in tuned if m.backbone == "minilm-l6"]  # weight space: one architecture
    members = cached(tuned)  # each member predicts validation and test once; fusions replay (and count) it
    tfidf = tfidf_logreg().fit(Xtr, ytr)
    tfidf.fit_time_ = 0.0
    mixed = members + cached([("tfidf", tfidf)])

    t = time.perf_counter()
    fusions = {
        "vote_hard": Voting(members, voting="hard", prefit=True),
        "vote_soft": Voting(members, prefit=True),
        "vote_weighted": Voting(members, weights="fit", prefit=True),
        "ensemble_selection": EnsembleSelection(members, prefit=True),
        "stacking": Stacking(members, prefit=True),
        "stacking+tfidf": Stacking(mixed, prefit=True),
        "ensemble_selection+tfidf": EnsembleSelection(mixed, prefit=True),
        "uniform_soup": WeightFusion(recipe, method="uniform_soup"),
        "greedy_soup": WeightFusion(recipe, method="greedy_soup"),
        "greedy_soup_all": WeightFusion(minilm, method="greedy_soup"),
        "wise_ft": WeightFusion(recipe, method="wise_ft"),
        "task_arithmetic": WeightFusion(recipe, method="task_arithmetic"),
        "ties": WeightFusion(recipe, method="ties"),
        "dare": WeightFusion(recipe, method="dare"),
    }
    for name, f in fusions.items():
        f.fit(Xva, yva)
        print(f"  fusion {name}: weights {', '.join(f'{k}:{v:.2f}' for k, v in f.weights_.items())}", flush=True)
    # Every fusion above fitted something on the 400 validation rows (weights, meta-learner, soup order, alpha,
    # scale), so its own score there is in-sample: the board shows its 5-fold cross-fitted score instead.
    honest_val = {name: cross_val_fusion(f, Xva, yva) for name, f in fusions.items()}
    print(f"  cross-fitted validation scores of the {len(honest_val)} fusions in {time.perf_counter() - t:.0f} s",
          flush=True)
    # Bagging and boosting refit their base estimator many times: with head-only members on shared frozen features
    # a bag of 5 costs little more than one (bench/fusion_cost.py); full fine-tunes x5 would not fit this run.
    head = Finetuner("minilm-l6", "head", verbose=0)
    fusions["bagging_head"] = Bagging(head, n_estimators=5).fit(Xtr, ytr)
    fusions["kfold_bagging_head"] = Bagging(head, mode="kfold", n_splits=5).fit(Xtr, ytr)
    fusions["boosting_head"] = Boosting(head, n_estimators=5).fit(Xtr, ytr)
    fusion_s = time.perf_counter() - t
    print(f"  fusions fitted in {fusion_s:.0f} s", flush=True)

    models = {**dict(members), "tfidf_logreg": cached([("t", tfidf)])[0][1], **fusions}
    board = leaderboard(models, Xva, yva, Xt, yt, val_proba=honest_val)

    # Cross-fitted protocol: fusions over the k-fold bags fit on their out-of-fold predictions for all 2,000
    # labelled rows; their validation scores are out-of-fold too (the fusion's weights refitted per fold).
    t = time.perf_counter()
    tfidf_bag = Bagging(tfidf_logreg(), mode="kfold", n_splits=args.folds).fit(X, y)
    print(f"  bag cv{args.folds}_tfidf: out-of-fold acc {tfidf_bag.oof_score_:.4f}", flush=True)
    cv_members = cached([*bags.items(), (f"cv{args.folds}_tfidf", tfidf_bag)])
    cv_fusions = {
        f"cv{args.folds}_stacking": Stacking(cv_members, prefit="oof"),
        f"cv{args.folds}_ensemble_selection": EnsembleSelection(cv_members, prefit="oof"),
        f"cv{args.folds}_vote_weighted": Voting(cv_members, weights="fit", prefit="oof"),
        f"cv{args.folds}_vote_soft": Voting(cv_members[:-1], prefit="oof"),  # the backbone bags alone
    }
    for name, f in cv_fusions.items():
        f.fit(X, y)
        print(f"  fusion {name}: weights {', '.join(f'{k}:{v:.2f}' for k, v in f.weights_.items())}", flush=True)
    fusions.update(cv_fusions)
    board = sort_leaderboard(pd.concat([board, leaderboard({**dict(cv_members), **cv_fusions}, None, y, Xt, yt)]))
    print(f"  cross-fitted rows in {time.perf_counter() - t:.0f} s", flush=True)
    member_rows = board[board["model"].isin(fitted)]
    best_member = member_rows.iloc[0]  # sorted by validation score, ties by validation log-loss
    fusion_rows = board[~board["model"].isin(list(fitted) + ["tfidf_logreg"])]
    best_fusion = fusion_rows.iloc[0]

    # Distillation of an output-space fusion (inference cost K models; a soup already costs one) into one LP-FT
    # student, on its soft labels for the labelled rows plus unlabelled reviews. The teacher is the one with the
    # best validation log-loss: the student learns its probabilities, not its argmax (chosen by accuracy, a hard
    # vote, whose "probabilities" are vote shares, was picked once and taught a student that kept 3% of the lift).
    teacher_name = fusion_rows[fusion_rows["kind"] != "WeightFusion"].sort_values("val_loss").iloc[0]["model"]
    teacher = {**fusions, **dict(cv_members)}[teacher_name]
    student = Distillation(teacher,
                           Finetuner("minilm-l6", "lp-ft", epochs=args.student_epochs, verbose=0),
                           X_unlabeled=X_unlabeled).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    print(f"  distilled {teacher_name} into one LP-FT student", flush=True)
    extra = {"distilled_student": student}
    if not args.skip_hf:
        extra["hf_trainer_default"] = hf_trainer_row(X, y)
    board = sort_leaderboard(pd.concat([board, leaderboard(extra, Xva, yva, Xt, yt)]))
    print("\n" + format_leaderboard(board))

    soups = board[board["model"].isin(["uniform_soup", "greedy_soup", "greedy_soup_all"])]
    soup_best = soups.iloc[0]  # the board is sorted: the soup with the best validation score
    distilled = board.set_index("model").loc["distilled_student", "test_score"]
    lift = best_fusion["test_score"] - best_member["test_score"]
    kept = (distilled - best_member["test_score"]) / lift if lift > 0 else float("nan")
    print(f"\nbest member by validation: {best_member['model']}; best fusion by validation: {best_fusion['model']}; "
          f"soup row: {soup_best['model']}; teacher of the student: {teacher_name}; "
          f"the student keeps {100 * kept:.0f}% of the lift")
    print(f"best_fusion={best_fusion['model']} acc={best_fusion['test_score']:.4f} "
          f"best_member_acc={best_member['test_score']:.4f} lift_pt={100 * lift:.2f} "
          f"soup_acc={soup_best['test_score']:.4f} distilled_acc={distilled:.4f}")


def held_out_split(X, y):
    """The held-out protocol's split of the labelled rows: 80 % train the members, 20 % fit the fusions."""
    tr, va = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return X.iloc[tr], y[tr], X.iloc[va], y[va]


def digest(*parts) -> str:
    """A short hash of texts and labels: saved members are keyed by the exact rows they were fitted on."""
    lists = [p["text"].tolist() if hasattr(p, "columns") else np.asarray(p).tolist() for p in parts]
    return hashlib.sha1(json.dumps(lists).encode()).hexdigest()[:10]


def fit_or_load(est, path: Path, fresh: bool, X, y, X_val=None, y_val=None):
    """Load the member (or k-fold bag) saved at ``path`` if fitted with ``est``'s parameters, else fit and save it."""
    def training_params(est) -> dict:  # JSON round trip: tuples compare as the saved lists
        params = est.get_params(deep=False)
        inner = params.pop("estimator", None)
        out = {k: v for k, v in json.loads(json.dumps(params)).items() if k not in ("verbose", "device")}
        return out if inner is None else {**out, "estimator": training_params(inner)}

    bag = isinstance(est, Bagging)
    meta = path / ("fusion.json" if bag else "tunefuse.json")
    if meta.exists() and not fresh:
        saved = load_fusion(path) if bag else Finetuner.load(path)
        if training_params(saved) == training_params(est):
            return saved, "loaded from " + str(path)
    if bag:
        est.fit(X, y)
        save_fusion(est, path)
    else:
        est.fit(X, y, X_val=X_val, y_val=y_val)
        est.save(path)
    return est, "fitted"


class _HFRow:
    """The Trainer at its defaults (1 epoch on all 2,000 labelled rows), wrapped for the leaderboard."""

    def __init__(self, model, tok, seconds):
        self.model, self.tok, self.fit_time_, self.classes_ = model, tok, seconds, np.array([0, 1])

    def predict_proba(self, X):
        import torch

        from tunefuse.data import collate, predict_batches, tokenize

        texts = list(np.asarray(X).reshape(len(X), -1)[:, 0])
        ids = tokenize(self.tok, texts, 128)
        lengths = np.array([len(x) for x in ids])
        out = np.empty((len(ids), 2))
        with torch.inference_mode():
            for rows in predict_batches(lengths, 8192):
                logits = self.model(**collate([ids[i] for i in rows], self.tok.pad_token_id)).logits
                out[rows] = torch.softmax(logits, -1).numpy()
        return out

    def save(self, path):
        self.model.save_pretrained(path)
        return path


def hf_trainer_row(X, y) -> _HFRow:
    sys.path.insert(0, os.path.dirname(__file__))
    from finetune_speed import hf_trainer

    model, tok, seconds, _ = hf_trainer(X["text"].tolist(), y, seed=0)
    return _HFRow(model, tok, seconds)


if __name__ == "__main__":
    main()
