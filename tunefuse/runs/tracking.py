"""Optional MLflow logging of a finished run (``tunefuse fit --mlflow URI``): the config as params, every model's
scores and every member's learning curve as metrics, the verdict as tags, and the run folder's small files
(config.yaml, leaderboard.csv, verdict.txt, report.html, metrics.jsonl) as artefacts.

Logged once the run has finished, from the run folder, so a fit killed and resumed logs one MLflow run, not pieces.
The models themselves stay in the run folder (a path is tagged): they can be hundreds of MB.
"""
from __future__ import annotations

import math
import re

from .folder import RunFolder

ARTIFACTS = ("config.yaml", "leaderboard.csv", "verdict.txt", "report.html", "metrics.jsonl", "calibration.json")


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces: anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)[:250]


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = str(d)[:500]
    return out


def check_mlflow(uri: str) -> None:
    """Fail before any fitting when ``uri`` cannot be logged to: no mlflow package, or a store that refuses."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise ValueError("--mlflow needs the mlflow package; fix: pip install mlflow-skinny (or pip install "
                         "'tunefuse[mlflow]')") from None
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        first = str(e).split(". ")[0]
        hint = ("set MLFLOW_ALLOW_FILE_STORE=true to use a file store with MLflow 3, or point --mlflow at a "
                "tracking server") if "MLFLOW_ALLOW_FILE_STORE" in str(e) else "check the URI and the server"
        raise ValueError(f"--mlflow {uri!r}: {first}; fix: {hint}") from None
    except Exception as e:  # noqa: BLE001 - an unreachable server, a bad scheme: the user's URI
        raise ValueError(f"--mlflow {uri!r} cannot be reached ({type(e).__name__}: {str(e)[:160]}); fix: check the "
                         "URI and that the tracking server is running") from None


def log_to_mlflow(run: RunFolder, cfg, board, verdict, uri: str, experiment: str = "tunefuse") -> str:
    """Log the finished run to the MLflow tracking server or store at ``uri``; returns the MLflow run id."""
    try:
        import mlflow
    except ImportError:
        raise ValueError("--mlflow needs the mlflow package; fix: pip install mlflow-skinny (or pip install "
                         "'tunefuse[mlflow]')") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run.path.name) as active:
        params = {_key(k): v for k, v in _flatten(cfg.model_dump(mode="json")).items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            mlflow.log_params(dict(items[i:i + 100]))
        metrics = {}
        for _, row in board.iterrows():
            for col in ("val_score", "val_se", "val_loss", "test_score", "ece", "ece_temperature", "ece_isotonic",
                        "fit_time_s", "predict_time_s", "size_mb"):
                if col in row and isinstance(row[col], float) and math.isfinite(row[col]):
                    metrics[_key(f"{row['model']}.{col}")] = float(row[col])
        mlflow.log_metrics(metrics)
        import json

        histories = []  # each member's curve from its fit record: the fit that produced the saved model, only
        for record in sorted((run.path / "members").glob("*/fit.json")):
            rec = json.loads(record.read_text())
            histories += [{"member": rec["name"], **h} for h in rec.get("history", [])]
        for event in histories:
            step = int(event.get("epoch", 0))
            for col in ("train_loss", "val_score", "val_loss"):
                v = event.get(col)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    stage = event.get("stage", "")
                    mlflow.log_metric(_key(f"{event['member']}.{stage}.{col}" if stage else f"{event['member']}.{col}"),
                                      float(v), step=step)
        mlflow.set_tags({"tunefuse.chosen": verdict.chosen, "tunefuse.verdict": verdict.text()[:4900],
                         "tunefuse.run_folder": str(run.path.resolve()), "tunefuse.task": cfg.task})
        for name in ARTIFACTS:
            if (run.path / name).is_file():
                mlflow.log_artifact(str(run.path / name))
        return active.info.run_id
