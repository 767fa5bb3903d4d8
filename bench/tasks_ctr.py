"""CTR on MovieLens-100k: logistic regression, gradient boosting, DeepFM / DCN-v2 / DIN from scratch and from a
behaviour-pretrained start, at 5 %, 20 % and 100 % of the training labels; fusions of the 100 % members.

Data: click = rating >= 4; each user's interactions split by time (last 20 % test, the 10 % before validation, the
rest training). The training interactions (user, item, time only) are the pretraining log; the labelled set is a
sample of them, redrawn per seed and shared by the with- and without-pretraining runs of that seed.

Selection: validation is split in two halves by row (seeded). Half A early-stops every member, picks pretraining's
best epoch and fits the fusions; half B only ranks single models and fusions; test rows are never used to choose.
B = the single model ranked first, C = the fusion ranked first; lifts are paired 95 % cluster-bootstrap intervals
(test users resampled with all their rows, 1,000 times) of the AUC difference. D = mean over seeds of the paired
test-AUC difference (pretrained - scratch) of the architecture ranked first at 5 % (by mean half-B AUC), E the lower
end of a bootstrap interval that resamples seeds and test users together.

    python bench/tasks_ctr.py            # full: 5 seeds, 3 architectures, 3 label fractions (about 30 minutes)
    python bench/tasks_ctr.py --quick    # 2 seeds, DeepFM and DIN, 5 % and 100 % (a few minutes)

Fitted members are kept under runs/bench_tasks_ctr/ (models + their validation/test probabilities): a rerun only
fits what is missing (``--fresh`` refits everything).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.special import logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import start_tee, write_results  # noqa: E402

import tunefuse  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.ctr import MOVIELENS_COLUMNS, TabularModel, label_sample, movielens_100k, report, time_split  # noqa
from tunefuse.fusion import Bagging, Distillation, EnsembleSelection, Stacking, Voting, WeightFusion  # noqa: E402
from tunefuse.ctr.pretrain import read_meta  # noqa: E402
from tunefuse.tasks.ctr import CTR  # noqa: E402

ROOT = Path("runs/bench_tasks_ctr")
BATCH, PATIENCE = 256, 2
N_BOOT = 1000


def user_resamples(users: np.ndarray, n_boot: int, seed: int = 0):
    """Row indices of ``n_boot`` cluster-bootstrap resamples: users drawn with replacement, all rows of each (a
    user's ~20 test rows are correlated, so resampling rows one by one would understate the uncertainty)."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(users, return_inverse=True)
    rows_of = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    for _ in range(n_boot):
        yield np.concatenate([rows_of[k] for k in rng.integers(0, len(uniq), len(uniq))])


def bootstrap_auc_diff(y, p_a, p_b, users, n_boot=N_BOOT, seed=0) -> tuple[float, float]:
    """95 % paired cluster-bootstrap interval (by user) of AUC(p_b) - AUC(p_a) on the test rows."""
    d = [roc_auc_score(y[i], p_b[i]) - roc_auc_score(y[i], p_a[i]) for i in user_resamples(users, n_boot, seed)]
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)


class Member:
    """One fitted model's validation and test click probabilities, from disk when already fitted."""

    def __init__(self, name: str, fit, folder: Path, *, saveable: bool):
        self.name, self.folder = name, folder
        probs = folder / "probs.npz"
        if probs.is_file():
            d = np.load(probs)
            self.val, self.test, self.fit_s = d["val"], d["test"], float(d["fit_s"])
            self._model = None
        else:
            t = time.perf_counter()
            self._model = fit()
            self.fit_s = time.perf_counter() - t
            self.val = self._model.predict_proba(DATA["val"])[:, 1]
            self.test = self._model.predict_proba(DATA["test"])[:, 1]
            folder.mkdir(parents=True, exist_ok=True)
            if saveable:
                self._model.save(folder / "model")
            np.savez(probs, val=self.val, test=self.test, fit_s=self.fit_s)
        self.saveable = saveable

    @property
    def model(self):
        if self._model is None:
            self._model = Finetuner.load(self.folder / "model", task="ctr")
        return self._model


class Fixed(ClassifierMixin, BaseEstimator):
    """A prefit member for the output fusions that replays stored probabilities on the validation and test tables."""

    def __init__(self, member: Member):
        self.member = member
        self.classes_ = np.array([0, 1])

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def predict_proba(self, X):
        rows = X["_row"].to_numpy()
        p = np.concatenate([self.member.val, self.member.test])[rows]
        return np.stack([1 - p, p], 1)

    def predict(self, X):
        return self.predict_proba(X).argmax(1)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, DeepFM and DIN, 5 %% and 100 %% of the labels")
    ap.add_argument("--fresh", action="store_true", help="refit every member (ignore runs/bench_tasks_ctr)")
    ap.add_argument("--seeds", type=int, default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore", tunefuse.ctr.UnseenIdsWarning)
    tee = start_tee()
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    archs = ("deepfm", "din") if args.quick else ("deepfm", "dcn-v2", "din")
    fractions = (0.05, 1.0) if args.quick else (0.05, 0.2, 1.0)
    epochs = 4 if args.quick else 8
    root = ROOT / ("quick" if args.quick else "full")
    if args.fresh and root.exists():
        shutil.rmtree(root)
    t_all = time.perf_counter()

    df = movielens_100k()
    split = time_split(df)
    tr, va, te = split["train"], split["val"], split["test"]
    va = va.assign(_row=np.arange(len(va)))
    te = te.assign(_row=np.arange(len(va), len(va) + len(te)))
    DATA.update(val=va, test=te)
    y_va, y_te = va["click"].to_numpy(), te["click"].to_numpy()
    # True: half A (early stopping, pretraining's best epoch, fusion weights); half B only ranks
    half = np.random.default_rng(0).permutation(len(va)) < len(va) // 2
    va_a = va[half]
    users_te = te["user_id"].to_numpy()
    print(f"MovieLens-100k: {len(tr)} train / {len(va)} val / {len(te)} test rows; click rate "
          f"{tr.click.mean():.3f} / {va.click.mean():.3f} / {te.click.mean():.3f}; "
          f"{tr.user_id.nunique()} users, {tr.item_id.nunique()} items in train")

    def auc_b(p_val):
        return roc_auc_score(y_va[~half], p_val[~half])

    # ---------------------------------------------------------------- behaviour pretraining (train log only)
    pre = {}
    for arch in archs:
        out = root / "pretrained" / arch
        if not (out / "pretrain.json").is_file():
            tunefuse.pretrain(tr.drop(columns=["rating", "click"]), task=CTR(**MOVIELENS_COLUMNS, model=arch), out=out,
                              X_val=va_a.drop(columns=["rating", "click"]), epochs=3 if args.quick else 5, verbose=0)
        meta = read_meta(out)
        best = meta["history"][meta["best_epoch"] - 1]
        print(f"pretrain {arch:7s} epochs {len(meta['history'])} (best {meta['best_epoch']}) val HR@10 "
              f"{best['hr@10']:.4f} NDCG@10 {best['ndcg@10']:.4f} ({meta['fit_time_s']:.0f} s)")
        pre[arch] = str(out)

    # ---------------------------------------------------------------- members
    rows = []  # (fraction, name, arch, start, seed, Member)

    def neural(frac, arch, start, seed):
        idx = label_sample(len(tr), frac, seed)
        lab = tr.iloc[idx]
        backbone = "scratch" if start == "scratch" else pre[arch]
        task = CTR(**MOVIELENS_COLUMNS, model=arch)
        est = Finetuner(backbone, task=task, epochs=epochs, batch_size=BATCH, patience=PATIENCE, verbose=0,
                        random_state=seed)
        return lambda: est.fit(lab, lab.click, X_val=va_a, y_val=va_a.click)

    for frac in fractions:
        for arch in archs:
            for start in ("scratch", "pretrained"):
                for seed in seeds:
                    name = f"{arch}-{start}"
                    m = Member(name, neural(frac, arch, start, seed), root / f"f{frac}" / f"{name}-s{seed}",
                               saveable=True)
                    rows.append((frac, name, arch, start, seed, m))
        for kind in ("lr", "hgb"):
            lab = tr.iloc[label_sample(len(tr), frac, 0)]
            est = TabularModel(kind, task=CTR(**MOVIELENS_COLUMNS))
            m = Member(kind, lambda est=est, lab=lab: est.fit(lab, lab.click), root / f"f{frac}" / kind,
                       saveable=False)
            rows.append((frac, kind, kind, "-", 0, m))

    print(f"\n{'fraction':>8s} {'model':22s} {'seeds':>5s} {'test AUC':>16s} {'GAUC':>7s} {'log-loss':>8s} "
          f"{'val-B AUC':>9s} {'fit s':>6s}")
    configs: dict[tuple, list] = {}
    for frac, name, arch, start, seed, m in rows:
        configs.setdefault((frac, name), []).append(m)
    for (frac, name), ms in configs.items():
        reps = [report(y_te, m.test, te.user_id.to_numpy()) for m in ms]
        aucs = [r["auc"] for r in reps]
        print(f"{frac:8.2f} {name:22s} {len(ms):5d} {np.mean(aucs):.4f} ± {np.std(aucs):.4f} "
              f"{np.mean([r['gauc'] for r in reps]):7.4f} {np.mean([r['log_loss'] for r in reps]):8.4f} "
              f"{np.mean([auc_b(m.val) for m in ms]):9.4f} {np.mean([m.fit_s for m in ms]):6.1f}")

    # ---------------------------------------------------------------- A, B
    full = [r for r in rows if r[0] == 1.0]
    lr = next(m for f, n, *_, m in full if n == "lr")
    A = roc_auc_score(y_te, lr.test)
    neural_full = [r for r in full if r[3] != "-"]
    b_row = max(neural_full + [r for r in full if r[1] == "hgb"], key=lambda r: auc_b(r[5].val))
    b = b_row[5]
    B = roc_auc_score(y_te, b.test)
    lo, hi = bootstrap_auc_diff(y_te, lr.test, b.test, users_te)
    print(f"\nA: logistic regression on one-hot ids, test AUC {A:.4f}")
    print(f"B: single model ranked first on validation half B: {b_row[1]} seed {b_row[4]}, test AUC {B:.4f}; "
          f"B - A = {B - A:+.4f} [{lo:+.4f}, {hi:+.4f}]")

    # ---------------------------------------------------------------- fusions (fitted on validation half A)
    best_cfg = {}
    for r in neural_full:
        best_cfg.setdefault(r[1], []).append(r)
    pool = [(f"{r[1]}-s{r[4]}", r[5]) for r in neural_full] + [(r[1], r[5]) for r in full if r[3] == "-"]
    members = [(n, Fixed(m)) for n, m in pool]
    fusions: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def proba(f):
        return f.predict_proba(va)[:, 1], f.predict_proba(te)[:, 1]

    t = time.perf_counter()
    fusions["voting-uniform"] = proba(Voting(members, prefit=True).fit(va_a, va_a.click))
    fusions["voting-logloss-weights"] = proba(Voting(members, weights="fit", prefit=True).fit(va_a, va_a.click))
    fusions["ensemble-selection-auc"] = proba(EnsembleSelection(members, metric="roc_auc", prefit=True)
                                              .fit(va_a, va_a.click))
    fusions["stacking-lr"] = proba(Stacking(members, prefit=True).fit(va_a, va_a.click))
    # the meta-learner on the members' log-odds: a weighted geometric mean of their odds plus a bias
    logodds = make_pipeline(FunctionTransformer(lambda p: logit(np.clip(p, 1e-6, 1 - 1e-6))),
                            LogisticRegression(max_iter=2000))
    fusions["stacking-logodds"] = proba(Stacking(members, final_estimator=logodds, prefit=True).fit(va_a, va_a.click))
    b_cfg = [r for r in neural_full if r[1] == b_row[1]]
    fusions[f"seed-average {b_row[1]}"] = proba(Voting([(f"s{r[4]}", Fixed(r[5])) for r in b_cfg], prefit=True)
                                                 .fit(va_a, va_a.click))
    fusion_s = time.perf_counter() - t
    # soups: members fine-tuned from one start (the best pretrained configuration)
    pre_cfgs = {n: rs for n, rs in best_cfg.items() if n.endswith("pretrained")}
    soup_cfg = max(pre_cfgs, key=lambda n: np.mean([auc_b(r[5].val) for r in pre_cfgs[n]]))
    soup_members = [(f"s{r[4]}", r[5].model) for r in pre_cfgs[soup_cfg]]
    for method in ("uniform_soup", "greedy_soup"):
        t = time.perf_counter()
        soup = WeightFusion(soup_members, method=method).fit(va_a, va_a.click)
        fusions[f"{method} {soup_cfg}"] = proba(soup)
        print(f"{method} of {soup_cfg}: weights {soup.weights_} ({time.perf_counter() - t:.1f} s)")
    # k-fold bagging of B's configuration (refits 5 fold models on the training rows)
    if b_row[3] != "-":
        folder = root / "bagging"
        bag_file = folder / "probs.npz"
        if bag_file.is_file():
            d = np.load(bag_file)
            fusions[f"bagging-5fold {b_row[1]}"] = (d["val"], d["test"])
        else:
            t = time.perf_counter()
            backbone = "scratch" if b_row[3] == "scratch" else pre[b_row[2]]
            est = Finetuner(backbone, task=CTR(**MOVIELENS_COLUMNS, model=b_row[2]), epochs=epochs,
                            batch_size=BATCH, patience=PATIENCE, verbose=0)
            bag = Bagging(est, mode="kfold", n_splits=5).fit(tr, tr.click)
            fusions[f"bagging-5fold {b_row[1]}"] = proba(bag)
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(bag_file, val=fusions[f"bagging-5fold {b_row[1]}"][0],
                     test=fusions[f"bagging-5fold {b_row[1]}"][1])
            print(f"bagging: {time.perf_counter() - t:.0f} s")
    # distillation of the stacking ensemble into one DeepFM (teacher probabilities on the training rows)
    folder = root / "distilled"
    if (folder / "probs.npz").is_file():
        d = np.load(folder / "probs.npz")
        fusions["distilled deepfm-pretrained"] = (d["val"], d["test"])
    else:
        teacher = Voting([(n, m.model) for n, m in pool if not n.startswith(("lr", "hgb")) and "pretrained" in n],
                         prefit=True).fit(va_a, va_a.click)
        student = Finetuner(pre["deepfm"], task=CTR(**MOVIELENS_COLUMNS), epochs=epochs, batch_size=BATCH,
                            patience=PATIENCE, verbose=0)
        dist = Distillation(teacher, student).fit(tr, tr.click, X_val=va_a, y_val=va_a.click)
        fusions["distilled deepfm-pretrained"] = proba(dist)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "probs.npz", val=fusions["distilled deepfm-pretrained"][0],
                 test=fusions["distilled deepfm-pretrained"][1])

    print(f"\n{'fusion (100 % labels)':40s} {'val-B AUC':>9s} {'test AUC':>8s} {'GAUC':>7s} {'log-loss':>8s} "
          f"{'ECE':>6s}")
    for name, (pv, pt) in fusions.items():
        r = report(y_te, pt, te.user_id.to_numpy())
        print(f"{name:40s} {auc_b(pv):9.4f} {r['auc']:8.4f} {r['gauc']:7.4f} {r['log_loss']:8.4f} {r['ece']:6.4f}")
    print(f"(output fusions on stored probabilities: {fusion_s:.1f} s)")
    c_name = max(fusions, key=lambda n: auc_b(fusions[n][0]))
    C = roc_auc_score(y_te, fusions[c_name][1])
    lo_c, hi_c = bootstrap_auc_diff(y_te, b.test, fusions[c_name][1], users_te)
    print(f"C: fusion ranked first on validation half B: {c_name}, test AUC {C:.4f}; C - B = {C - B:+.4f} "
          f"[{lo_c:+.4f}, {hi_c:+.4f}]")

    # ---------------------------------------------------------------- D, E: pretraining gain per fraction
    print(f"\n{'fraction':>8s} {'architecture':12s} {'scratch AUC':>11s} {'pretrained':>10s} "
          f"{'gain (mean of seeds)':>20s} {'95 % interval':>18s}")
    gains = {}
    for frac in fractions:
        by_arch = {}
        for arch in archs:
            s = {r[4]: r[5] for r in rows if r[0] == frac and r[2] == arch and r[3] == "scratch"}
            p = {r[4]: r[5] for r in rows if r[0] == frac and r[2] == arch and r[3] == "pretrained"}
            diffs = np.array([roc_auc_score(y_te, p[k].test) - roc_auc_score(y_te, s[k].test) for k in seeds])
            # interval: resample seeds and test users together (the seed noise and the test-set noise)
            rng = np.random.default_rng(1)
            boot = []
            for i in user_resamples(users_te, 300, seed=1):
                ks = rng.choice(seeds, len(seeds))
                boot.append(np.mean([roc_auc_score(y_te[i], p[k].test[i]) - roc_auc_score(y_te[i], s[k].test[i])
                                     for k in ks]))
            lo_d, hi_d = np.percentile(boot, [2.5, 97.5])
            val_rank = np.mean([auc_b(m.val) for m in list(s.values()) + list(p.values())])
            by_arch[arch] = (diffs.mean(), lo_d, hi_d, val_rank)
            print(f"{frac:8.2f} {arch:12s} {np.mean([roc_auc_score(y_te, s[k].test) for k in seeds]):11.4f} "
                  f"{np.mean([roc_auc_score(y_te, p[k].test) for k in seeds]):10.4f} {diffs.mean():+20.4f} "
                  f"[{lo_d:+.4f}, {hi_d:+.4f}]")
        gains[frac] = by_arch
    best5 = max(gains[0.05], key=lambda a: gains[0.05][a][3])
    D, E = gains[0.05][best5][0], gains[0.05][best5][1]
    print(f"D: architecture ranked first at 5 % on validation: {best5}; gain {D:+.4f}, interval low {E:+.4f}")
    print(f"\nruntime {time.perf_counter() - t_all:.0f} s (members cached under {root})")
    print(f"ctr_auc_lr={A:.4f} ctr_auc_member={B:.4f} ctr_auc_fusion={C:.4f} pretrain_gain_auc_5pct={D:.4f} "
          f"pretrain_gain_ci_low={E:.4f}")
    write_results(tee, Path("bench/results") / ("tasks_ctr_quick.txt" if args.quick else "tasks_ctr.txt"))


DATA: dict = {}

if __name__ == "__main__":
    main()
