"""The README's first command: ``tunefuse fit examples/reviews.yaml``, real fine-tunes and their fusion on bundled
real data, printed as a leaderboard with the verdict, into a run folder with the report.

    python -m tunefuse.demo [--set key=value ...]      (the same as: tunefuse fit examples/reviews.yaml --set ...)

Women's E-Commerce reviews (label Rating >= 4), 2,000 labelled and 4,000 test rows: MiniLM-L6 fine-tuned by LP-FT,
frozen-feature probes of MPNet-base and SmolLM2-135M, a TF-IDF + logistic-regression baseline, then stacking,
ensemble selection and a soft vote fitted on 400 held-out rows (scored there by 5-fold cross-fitting), and the one
verdict (``tunefuse.fusion.verdict``): which model to ship by the one-standard-error rule, its lift over the best
member with a paired bootstrap interval, and its inference cost. Run it again after a kill and it resumes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .baselines import first_column, tfidf_logreg  # noqa: F401 (kept importable from here)

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "reviews.yaml"


def main(argv: list[str] | None = None):
    from .runs.config import load_config
    from .runs.experiment import fit_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", "-s", action="append", default=[], help="override a config key, e.g. --set seed=1")
    args = ap.parse_args(argv)
    if not CONFIG.is_file():
        raise SystemExit(f"error: the demo's config {CONFIG} ships with the repository, not the wheel; fix: run it "
                         "from a clone, or `tunefuse fit` your own config")
    return fit_run(load_config(CONFIG, args.set))


if __name__ == "__main__":
    main()
