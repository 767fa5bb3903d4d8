"""Every fusion against the best single member, Hugging Face's Trainer and TF-IDF, on the reviews task.

2,000 labelled reviews (Rating >= 4), two protocols side by side. Held-out: members train on 1,600 and every
fusion fits its weights, meta-learner, soup order, alpha or scale on the other 400 (validation); its validation
score is 5-fold cross-fitted over those 400 rows, since its own score there would be in-sample. Cross-fitted
(AutoGluon's bagging and stacking): configurations are k-fold bags over all 2,000 rows, and the fusions over them
fit on the bags' out-of-fold predictions, their validation scores out-of-fold as well. Members come from three
backbone families: MPNet-base and MiniLM-L6 (encoders, fine-tuned and read frozen) and SmolLM2-135M (a decoder, read
frozen). Test: the last 4,000 reviews. The best fusion and the best member are both chosen by validation score less
one standard error (the held-out fusions' scores rest on 400 rows, the cross-fitted ones on 2,000; ties: validation
log-loss), never by test score.

Then semi-supervised distillation: the fusion with the best validation log-loss labels unlabelled reviews (rows
between the labelled and the test rows, never the test rows) and one student of one model's inference cost trains
on its soft labels; a noisy-student round (Xie et al., 2020: the student, its inputs noised, learns from the clean
first student) and the two students' vote are reported beside it.

    python bench/fusion_quality.py            # several hours on 2 cores; reruns reuse everything fitted
    python bench/fusion_quality.py --quick    # at most 20 minutes from nothing: frozen-feature members, 3 folds

``--quick`` keeps the 2,000 labelled rows but tests on 1,000, fits two 1-epoch MiniLM LP-FT members (the soup) beside
frozen-feature probes of MPNet, SmolLM2 and MiniLM, 3-fold bags of the probes, 2,000 unlabelled rows and a 1-epoch
MiniLM student. Fitted members, bags, students and the teacher's labels of the unlabelled rows are saved under
``--run-dir`` (safetensors + JSON; probabilities as .npy, and ``teacher/NAME_KEY/labels.csv`` with each unlabelled
text) and reloaded by a rerun whose parameters, data and teacher match; ``--fresh`` refits and relabels them. A run
with settings other than a mode's defaults writes ``bench/results/fusion_quality[_quick]_custom.txt``. The last
line: ``best_fusion=NAME acc=A best_member_acc=M lift_pt=L soup_acc=S distilled_acc=D quick=0|1``.
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
from sklearn.base import BaseEstimator, ClassifierMixin, clone  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from bench.common import start_tee, write_results  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.baselines import tfidf_logreg  # noqa: E402
from tunefuse.fusion import (Bagging, Boosting, Distillation, EnsembleSelection, Stacking, Voting,  # noqa: E402
                             WeightFusion, cross_val_fusion, format_leaderboard, leaderboard, load_fusion,
                             save_fusion)
from tunefuse.fusion.leaderboard import sort_leaderboard  # noqa: E402
from tunefuse.fusion.members import _digest, cached  # noqa: E402


def members_spec(epochs: int, quick: bool) -> dict[str, Finetuner]:
    """The held-out members (1,600 training rows, 400 validation).

    Full: five MiniLM LP-FT members and three MPNet LP-FT members (different seeds and learning rates: the soup
    recipes; Wortsman et al., 2022 soup a hyper-parameter sweep of one recipe; the L-BFGS probe is deterministic, so
    each recipe's members fine-tune from one probed start and stay averageable), full, LoRA and head-only MiniLM
    members for diversity, and frozen-feature probes of MPNet and SmolLM2. Quick: two 1-epoch MiniLM LP-FT members
    (the soup) and the three frozen probes.
    """
    kw = dict(epochs=epochs, verbose=0)
    frozen = {
        "mpnet_head": Finetuner("mpnet-base", "head", random_state=9, verbose=0),
        "smol_head": smol_head(verbose=0),
    }
    if quick:
        return {
            "lpft_s0_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=0, lr=3e-5, **kw),
            "lpft_s1_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=1, lr=3e-5, **kw),
            "head_s5": Finetuner("minilm-l6", "head", random_state=5, verbose=0),
            **frozen,
        }
    return {
        **frozen,
        "mpnet_lpft_s0_lr3e-5": Finetuner("mpnet-base", "lp-ft", random_state=0, lr=3e-5, **kw),
        "mpnet_lpft_s1_lr5e-5": Finetuner("mpnet-base", "lp-ft", random_state=1, lr=5e-5, **kw),
        "mpnet_lpft_s2_lr3e-5": Finetuner("mpnet-base", "lp-ft", random_state=2, lr=3e-5, **kw),
        "lpft_s0_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=0, lr=3e-5, **kw),
        "lpft_s1_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=1, lr=3e-5, **kw),
        "lpft_s2_lr5e-5": Finetuner("minilm-l6", "lp-ft", random_state=2, lr=5e-5, **kw),
        "lpft_s6_lr4e-5": Finetuner("minilm-l6", "lp-ft", random_state=6, lr=4e-5, **kw),
        "lpft_s7_lr3e-5": Finetuner("minilm-l6", "lp-ft", random_state=7, lr=3e-5, **kw),
        "full_s3_lr5e-5": Finetuner("minilm-l6", "full", random_state=3, lr=5e-5, **kw),
        "lora_s4_lr5e-4": Finetuner("minilm-l6", "lora", random_state=4, lr=5e-4, **kw),
        "head_s5": Finetuner("minilm-l6", "head", random_state=5, **kw),
    }


# A third backbone family, for errors less correlated with the encoders': SmolLM2-135M (a decoder) read frozen, its
# first 20 of 30 layers mean-pooled over a prompted review, with a linear head. Mid-depth features of decoders probe
# better than the last layer (bench/experiments/smollm2_layers.py, 2,000 labelled rows, 5-fold logistic regression:
# layer 20 0.8985, layer 30 0.880) and 20 layers cost two thirds of the forward pass. Head-only: fine-tuning 135 M
# parameters at ~7 s a step would not fit this run, and frozen features are computed once for every member and fold
# model that reads them. The probe reads standardised features (bench/results/smollm2_probe.txt: 0.8905 raw, 0.8955
# standardised out-of-fold).
REVIEW_PROMPT = 'Review of a clothing item: "{text}"\nDid the customer like the item?'


def smol_head(**kw) -> Finetuner:
    return Finetuner("smollm2-135m", "head", random_state=8, pooling="mean", template=REVIEW_PROMPT,
                     probe_standardize=True, config_overrides={"num_hidden_layers": 20}, **kw)


def crossfit_spec(epochs: int, quick: bool, folds: int) -> dict[str, Finetuner]:
    """Configurations cross-fitted as k-fold bags on all 2,000 labelled rows (AutoGluon's bagging).

    Each fold model trains on (k-1)/k of the rows and stops early on its held-out fold; the bag predicts with the
    mean of its fold models, and its out-of-fold predictions cover every labelled row, so the fusions over bags fit
    on 2,000 rows instead of 400 and every labelled row also trains a member. Full: MPNet LP-FT and MiniLM full
    fine-tunes (the best MiniLM bag of earlier runs, bench/results/fusion_error_correlation.txt) and the frozen
    probes of MPNet and SmolLM2; quick: the three frozen probes (k models on features computed once).
    """
    c = f"cv{folds}_"
    frozen = {c + "mpnet_head": Finetuner("mpnet-base", "head", random_state=9, verbose=0),
              c + "smol_head": smol_head(verbose=0)}
    if quick:
        return {**frozen, c + "minilm_head": Finetuner("minilm-l6", "head", random_state=5, verbose=0)}
    return {**frozen,  # cheapest first: a stopped run keeps every bag it finished
            c + "full_lr5e-5": Finetuner("minilm-l6", "full", random_state=3, lr=5e-5, epochs=epochs, verbose=0),
            c + "mpnet_lpft_lr3e-5": Finetuner("mpnet-base", "lp-ft", random_state=0, lr=3e-5, epochs=epochs,
                                               verbose=0)}


def student_spec(quick: bool, epochs: int) -> Finetuner:
    """The distilled student: one MPNet LP-FT (full; MPNet's inference cost) or one MiniLM LP-FT (quick)."""
    backbone = "minilm-l6" if quick else "mpnet-base"
    return Finetuner(backbone, "lp-ft", random_state=11, lr=3e-5, epochs=epochs, verbose=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="frozen-feature members, 3 folds, 1,000 test rows")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=None, help="test rows (default 4,000; --quick 1,000)")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 3; --quick 1)")
    ap.add_argument("--unlabeled", type=int, default=None,
                    help="unlabelled reviews the teacher labels for the student (default 8,000; --quick 2,000)")
    ap.add_argument("--student-epochs", type=int, default=None, help="default 2; --quick 1")
    ap.add_argument("--noisy-rounds", type=int, default=None, help="noisy-student rounds (default 1; --quick 0)")
    ap.add_argument("--run-dir", default="runs/bench_fusion_quality", help="where fitted models are kept")
    ap.add_argument("--fresh", action="store_true", help="refit everything even if saved models match")
    ap.add_argument("--skip-hf", action="store_true", help="leave out the Trainer row (--quick leaves it out)")
    ap.add_argument("--folds", type=int, default=None, help="folds of the cross-fitted bags (default 5; --quick 3)")
    ap.add_argument("--members-only", action="store_true", help="fit (or load) the members and bags, then stop")
    args = ap.parse_args()
    q = args.quick
    pick = lambda v, full, quick: v if v is not None else (quick if q else full)  # noqa: E731
    n_test, epochs = pick(args.test, 4000, 1000), pick(args.epochs, 3, 1)
    n_unlab, student_epochs = pick(args.unlabeled, 8000, 2000), pick(args.student_epochs, 2, 1)
    noisy_rounds, folds = pick(args.noisy_rounds, 1, 0), pick(args.folds, 5, 3)
    t_start = time.perf_counter()
    tee = None if args.members_only else start_tee()  # what the run prints is also its results file

    X, y, Xt, yt = load_reviews(args.train, n_test)
    pool, _, _, _ = load_reviews(args.train + n_unlab, n_test)  # same shuffle: rows after the labelled ones
    X_unlabeled = pool.iloc[args.train:]
    if len(X_unlabeled) < n_unlab or set(X_unlabeled["text"]) & set(Xt["text"]):
        raise SystemExit(f"--unlabeled {n_unlab}: the unlabelled rows would reach the test rows; fix: fewer")
    Xtr, ytr, Xva, yva = held_out_split(X, y)
    print(f"reviews: {len(Xtr)} train, {len(Xva)} validation, {len(Xt)} test, {len(X_unlabeled)} unlabelled; "
          f"majority {max(yt.mean(), 1 - yt.mean()):.4f}; quick={int(q)}", flush=True)

    fitted: dict[str, object] = {}
    # Keyed by the exact rows: another split gets other members; --quick's members (other epochs) are kept apart.
    run_dir = Path(args.run_dir) / f"train{len(Xtr)}_val{len(Xva)}_{digest(Xtr, ytr, Xva)}"
    tag = "_quick" if q else ""
    for name, est in members_spec(epochs, q).items():
        fitted[name], how = fit_or_load(est, run_dir / f"members{tag}" / name, args.fresh, Xtr, ytr, Xva, yva)
        print(f"  member {name}: {how}, fit {fitted[name].fit_time_:.0f} s", flush=True)
    cv_dir = Path(args.run_dir) / f"cv{folds}_train{len(X)}_{digest(X, y)}"
    bags: dict[str, Bagging] = {}
    for name, est in crossfit_spec(epochs, q, folds).items():
        bag = Bagging(est, mode="kfold", n_splits=folds, fold_validation=True)
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
    members = cached(tuned)  # each member predicts validation and test once; fusions replay (and count) it
    tfidf = tfidf_logreg().fit(Xtr, ytr)
    tfidf.fit_time_ = 0.0
    mixed = members + cached([("tfidf", tfidf)])
    # Weight space: one architecture and, for the soups, one recipe (one strategy from one probed start)
    minilm_recipe = [(n, m) for n, m in tuned if n.startswith("lpft")]
    mpnet_recipe = [(n, m) for n, m in tuned if n.startswith("mpnet_lpft")]
    minilm = [(n, m) for n, m in tuned if m.backbone == "minilm-l6"]

    t = time.perf_counter()
    fusions = {
        "vote_hard": Voting(members, voting="hard", prefit=True),
        "vote_soft": Voting(members, prefit=True),
        "vote_weighted": Voting(members, weights="fit", prefit=True),
        "ensemble_selection": EnsembleSelection(members, prefit=True),
        "stacking": Stacking(members, prefit=True),
        "stacking+tfidf": Stacking(mixed, prefit=True),
        "ensemble_selection+tfidf": EnsembleSelection(mixed, prefit=True),
        "uniform_soup": WeightFusion(minilm_recipe, method="uniform_soup"),
        "greedy_soup": WeightFusion(minilm_recipe, method="greedy_soup"),
    }
    if mpnet_recipe:
        fusions["mpnet_uniform_soup"] = WeightFusion(mpnet_recipe, method="uniform_soup")
        fusions["mpnet_greedy_soup"] = WeightFusion(mpnet_recipe, method="greedy_soup")
    if not q:
        fusions.update({
            "greedy_soup_all": WeightFusion(minilm, method="greedy_soup"),
            "wise_ft": WeightFusion(minilm_recipe, method="wise_ft"),
            "task_arithmetic": WeightFusion(minilm_recipe, method="task_arithmetic"),
            "ties": WeightFusion(minilm_recipe, method="ties"),
            "dare": WeightFusion(minilm_recipe, method="dare"),
        })
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
    print(f"  fusions fitted in {time.perf_counter() - t:.0f} s", flush=True)

    models = {**dict(members), "tfidf_logreg": cached([("t", tfidf)])[0][1], **fusions}
    board = leaderboard(models, Xva, yva, Xt, yt, val_proba=honest_val)

    # Cross-fitted protocol: fusions over the k-fold bags fit on their out-of-fold predictions for all 2,000
    # labelled rows; their validation scores are out-of-fold too (the fusion's weights refitted per fold).
    t = time.perf_counter()
    tfidf_bag = Bagging(tfidf_logreg(), mode="kfold", n_splits=folds).fit(X, y)
    print(f"  bag cv{folds}_tfidf: out-of-fold acc {tfidf_bag.oof_score_:.4f}", flush=True)
    cv_members = cached([*bags.items(), (f"cv{folds}_tfidf", tfidf_bag)])
    cv_fusions = {
        f"cv{folds}_stacking": Stacking(cv_members, prefit="oof"),
        f"cv{folds}_ensemble_selection": EnsembleSelection(cv_members, prefit="oof"),
        f"cv{folds}_vote_weighted": Voting(cv_members, weights="fit", prefit="oof"),
        f"cv{folds}_vote_soft": Voting(cv_members[:-1], prefit="oof"),  # the backbone bags alone
    }
    for name, f in cv_fusions.items():
        f.fit(X, y)
        print(f"  fusion {name}: weights {', '.join(f'{k}:{v:.2f}' for k, v in f.weights_.items())}", flush=True)
    fusions.update(cv_fusions)
    board = sort_leaderboard(pd.concat([board, leaderboard({**dict(cv_members), **cv_fusions}, None, y, Xt, yt)]))
    print(f"  cross-fitted rows in {time.perf_counter() - t:.0f} s", flush=True)
    member_rows = board[board["model"].isin(fitted)]
    best_member = member_rows.iloc[0]  # sorted by validation score less one SE, ties by validation log-loss
    fusion_rows = board[~board["model"].isin(list(fitted) + ["tfidf_logreg"])]
    best_fusion = fusion_rows.iloc[0]

    # Part of a bag's lift is its extra data (every labelled row trains a fold model): the best member's
    # configuration refitted once on all 2,000 labelled rows (AutoGluon's refit_full), tested only: its epochs as
    # configured without early stopping, its probe's L2 strength the one its validation rows chose.
    refit_name = f"refit_all_{best_member['model']}"
    chosen = fitted[best_member["model"]]
    refit = clone(chosen).set_params(early_stopping=False, probe_l2=getattr(chosen, "probe_l2_", None))
    refit, how = fit_or_load(refit, run_dir / f"refit_all{tag}" / str(best_member["model"]), args.fresh, X, y)
    print(f"  {refit_name}: {how}, fit {refit.fit_time_:.0f} s", flush=True)

    # Distillation of an output-space fusion (inference cost K models; a soup already costs one) into one student,
    # on its soft labels for the training rows plus unlabelled reviews. The teacher is the one with the best
    # validation log-loss: the student learns its probabilities, not its argmax (chosen by accuracy, a hard vote,
    # whose "probabilities" are vote shares, was picked once and taught a student that kept 3% of the lift).
    teacher_name = fusion_rows[fusion_rows["kind"] != "WeightFusion"].sort_values("val_loss").iloc[0]["model"]
    fused = {**fusions, **dict(cv_members)}[teacher_name]
    # Saved labels are this teacher's: keyed by the rows, the protocol and the teacher's own test probabilities
    # (computed for the board already), so a teacher refitted on other members or epochs labels afresh
    fingerprint = _digest(np.round(np.asarray(fused.predict_proba(Xt)), 6))
    teacher_key = hashlib.sha1(json.dumps([teacher_name, run_dir.name, cv_dir.name, fingerprint]).encode()
                               ).hexdigest()[:10]
    teacher = SavedProba(fused, Path(args.run_dir) / "teacher" / f"{teacher_name}{tag}_{teacher_key}", args.fresh)
    students = distil(teacher, teacher_key, student_spec(q, student_epochs), noisy_rounds, Xtr, ytr, Xva, yva,
                      X_unlabeled, Path(args.run_dir) / "students" / digest(Xtr, ytr, Xva, X_unlabeled), args.fresh)
    teacher.share(Xtr["text"].tolist(), X_unlabeled["text"].tolist())
    extra: dict[str, object] = {**students, refit_name: refit}
    if len(students) > 1:  # a fusion of students: K students' inference cost, reported, not the student row
        extra["students_vote"] = Voting(cached(list(students.items())), prefit=True).fit(Xva, yva)
    if not (args.skip_hf or q):
        extra["hf_trainer_default"] = hf_trainer_row(X, y)
    extra_board = leaderboard(extra, Xva, yva, Xt, yt)
    saw_val = extra_board["model"].isin([refit_name, "hf_trainer_default"])  # trained on the validation rows too
    extra_board.loc[saw_val, ["val_score", "val_se", "val_loss"]] = np.nan
    board = sort_leaderboard(pd.concat([board, extra_board]))
    print("\n" + format_leaderboard(board))

    by = board.set_index("model")
    soups = board[board["kind"].eq("WeightFusion") & board["model"].str.contains("soup")]
    soup_best = soups.iloc[0]  # the board is sorted: the soup with the best validation score
    student_rows = board[board["model"].isin(students)]
    student_best = student_rows.iloc[0]["model"]  # the student with the best validation score
    distilled = by.loc[student_best, "test_score"]
    M, A = best_member["test_score"], best_fusion["test_score"]
    lift = A - M
    kept = (distilled - M) / lift if lift > 0 else float("nan")
    bm = str(best_member["model"])
    cost = lambda name: by.loc[student_best, "predict_time_s"] / by.loc[name, "predict_time_s"]  # noqa: E731
    print(f"\nbest member by validation: {bm} ({fitted[bm].backbone}, {fitted[bm].strategy}); best fusion by "
          f"validation: {best_fusion['model']}; soup row: {soup_best['model']}; teacher of the students: "
          f"{teacher_name}; student row: {student_best} ({students[student_best].student_.backbone}, one model: "
          f"{cost(bm):.1f}x the best member's inference time, {cost('lpft_s0_lr3e-5'):.1f}x a MiniLM LP-FT "
          f"member's); the student keeps {100 * kept:.0f}% of the lift (target 80%)")
    R = by.loc[refit_name, "test_score"]
    print(f"against the best member's configuration refitted on all {len(y)} labelled rows ({R:.4f}): the best "
          f"fusion {100 * (A - R):+.2f} points, the student {100 * (distilled - R):+.2f}; "
          f"total {time.perf_counter() - t_start:.0f} s")
    print(f"best_fusion={best_fusion['model']} acc={A:.4f} best_member_acc={M:.4f} lift_pt={100 * lift:.2f} "
          f"soup_acc={soup_best['test_score']:.4f} distilled_acc={distilled:.4f} quick={int(q)}")
    custom = args.train != 2000 or args.skip_hf or any(v is not None for v in (
        args.test, args.epochs, args.unlabeled, args.student_epochs, args.noisy_rounds, args.folds))
    name = f"fusion_quality{'_quick' if q else ''}{'_custom' if custom else ''}.txt"  # the mode's file: defaults only
    write_results(tee, Path(__file__).resolve().parent / "results" / name)


class SavedProba(ClassifierMixin, BaseEstimator):
    """A fitted model whose probabilities for each distinct input are kept on disk (``folder/<digest>.npy``):
    the teacher labels thousands of unlabelled reviews once, and a rerun (or another bench) reads them back."""

    def __init__(self, model, folder: Path, fresh: bool = False):
        self.model, self.folder, self.fresh = model, Path(folder), fresh
        self.classes_ = np.asarray(model.classes_)

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, *args, **kwargs):  # scikit-learn's check_is_fitted asks for one; the model is fitted already
        raise TypeError("SavedProba wraps a fitted model; fit the model itself")

    def predict_proba(self, X) -> np.ndarray:
        path = self.folder / f"{_digest(X)[:16]}.npy"
        if path.is_file() and not self.fresh:
            return np.load(path, allow_pickle=False)
        p = np.asarray(self.model.predict_proba(X), dtype=np.float64)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, p, allow_pickle=False)
        os.replace(tmp, path)
        return p

    def share(self, labelled: list[str], texts: list[str]) -> Path:
        """The teacher's labels of ``texts`` as a table anyone can read without this code: ``labels.csv`` (text,
        then one probability column a class) beside the .npy files. Read from the student's own call (the labelled
        rows, then ``texts``), saved already, rather than predicted again."""
        p = self.predict_proba(labelled + texts)[len(labelled):]
        table = pd.DataFrame({"text": texts, **{f"p_{c}": p[:, i] for i, c in enumerate(self.classes_)}})
        out, tmp = self.folder / "labels.csv", self.folder / "labels.csv.tmp"
        table.to_csv(tmp, index=False)
        os.replace(tmp, out)
        return out


def word_dropout(texts: list[str], p: float, seed: int) -> list[str]:
    """The noisy student's input noise: each word dropped with probability ``p`` (at least one word kept). Written
    here: a few lines, and the augmentation libraries (nlpaug) pull in models this machine cannot fetch."""
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = text.split()
        keep = [w for w in words if rng.random() >= p] or words[:1]
        out.append(" ".join(keep))
    return out


NOISE = {"word_dropout": 0.1, "dropout": 0.1}  # the noisy student's input noise and backbone dropout


def distil(teacher, teacher_key: str, student: Finetuner, noisy_rounds: int, Xtr, ytr, Xva, yva, X_unlabeled,
           folder: Path, fresh: bool) -> dict[str, Distillation]:
    """The first student learns the teacher's soft labels of the training and unlabelled rows (validation rows for
    early stopping only); each noisy-student round trains a new student (with dropout) on word-dropped copies of
    the unlabelled rows (and the training rows as they are) against the previous student's clean soft labels.
    Saved per round, keyed by the teacher's key and, for a later round, by the previous round's key."""
    out: dict[str, Distillation] = {}
    current, current_key, current_name = teacher, teacher_key, "the teacher"
    for r in range(noisy_rounds + 1):
        name = "distilled_student" if r == 0 else f"noisy_student_{r}"
        est = student if r == 0 else clone(student).set_params(dropout=NOISE["dropout"])
        key = json.dumps({"teacher": current_key, "student": {k: v for k, v in est.get_params().items()
                                                               if k not in ("verbose", "device")}, "round": r,
                          "noise": NOISE if r else None}, sort_keys=True, default=str)
        path = folder / name
        d = Distillation(current, est, X_unlabeled=X_unlabeled)
        record = path / "bench.json"
        if not fresh and record.is_file() and json.loads(record.read_text())["key"] == key:
            d.student_, d.classes_ = Finetuner.load(path / "model"), np.asarray(current.classes_)
            d.weights_ = {"student": 1.0}
            d.fit_time_ = json.loads(record.read_text())["fit_time_s"]
            how = "loaded"
        else:
            t0 = time.perf_counter()
            if r == 0:
                d.fit(Xtr, ytr, X_val=Xva, y_val=yva)
            else:  # noisy student: the teacher labels clean texts, the student reads noised ones
                texts = Xtr["text"].tolist() + X_unlabeled["text"].tolist()
                p = current.predict_proba(texts)
                noised = Xtr["text"].tolist() + word_dropout(X_unlabeled["text"].tolist(), NOISE["word_dropout"], r)
                d.student_ = clone(est).fit_soft(noised, p, current.classes_, X_val=Xva, y_val=yva)
                d.classes_, d.weights_ = np.asarray(current.classes_), {"student": 1.0}
            d.fit_time_ = time.perf_counter() - t0
            d.student_.save(path / "model")
            record.write_text(json.dumps({"key": key, "fit_time_s": d.fit_time_}))
            how = "fitted"
        print(f"  {name} (teacher: {current_name}): {how}, fit {d.fit_time_:.0f} s", flush=True)
        out[name] = d
        current, current_name = cached([(name, d)])[0][1], name
        current_key = hashlib.sha1(key.encode()).hexdigest()[:10]
    return out


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
    argv = sys.argv
    sys.argv = argv[:1]  # bench/finetune_speed.py reads its own options at import: not this bench's
    try:
        from bench.finetune_speed import hf_trainer
    finally:
        sys.argv = argv
    model, tok, out, _ = hf_trainer(X["text"].tolist(), y, None, seed=0, predict=False)
    return _HFRow(model, tok, out["train_s"])


if __name__ == "__main__":
    main()
