"""The distilled student of bench/fusion_quality.py under its teacher rule (best validation log-loss), alone.

The bench's run of 2026-11-29 picked its teacher by validation accuracy: a hard vote, whose vote shares taught a
student that kept 3% of the lift. This reruns only the student, from the bench's saved members, with the teacher the
new rule picks in that run (ensemble selection over the eight members and TF-IDF, validation log-loss 0.2418):

    python bench/experiments/distill_teacher.py        # ~10 minutes on 2 cores once the bench's members exist

It measured 0.8925 with the eight MiniLM members of that run. The bench's members now include a SmolLM2 probe, so a
rerun fuses nine members and TF-IDF; the bench itself now distils under the log-loss rule (README, Fusion).
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from pathlib import Path  # noqa: E402

from fusion_quality import digest, fit_or_load, held_out_split, members_spec  # noqa: E402

from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.baselines import tfidf_logreg  # noqa: E402
from tunefuse.fusion import Distillation, EnsembleSelection  # noqa: E402
from tunefuse.fusion.members import cached  # noqa: E402


def main() -> None:
    X, y, Xt, yt = load_reviews(2000, 4000)
    pool, _, _, _ = load_reviews(2000 + 2000, 4000)
    X_unlabeled = pool.iloc[2000:]
    Xtr, ytr, Xva, yva = held_out_split(X, y)
    run_dir = Path("runs/bench_fusion_quality") / f"train{len(Xtr)}_val{len(Xva)}_{digest(Xtr, ytr, Xva)}"
    members = [(n, fit_or_load(e, run_dir / "members" / n, False, Xtr, ytr, Xva, yva)[0])
               for n, e in members_spec(3).items()]
    teacher = EnsembleSelection(cached(members) + cached([("tfidf", tfidf_logreg().fit(Xtr, ytr))]), prefit=True)
    teacher.fit(Xva, yva)
    print("teacher ensemble_selection+tfidf:", {k: round(v, 2) for k, v in teacher.weights_.items()}, flush=True)
    t0 = time.perf_counter()
    student = Distillation(teacher, Finetuner("minilm-l6", "lp-ft", epochs=2, verbose=0),
                           X_unlabeled=X_unlabeled).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    print(f"teacher test acc {teacher.score(Xt, yt):.4f}; student test acc {student.score(Xt, yt):.4f} "
          f"(validation {student.score(Xva, yva):.4f}); distillation {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
