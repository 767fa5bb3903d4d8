"""The ``tunefuse`` command (typer): fit a config into a run folder, resume it, predict, evaluate, report.

Exit codes: 0 done; 1 a failure of tunefuse's own (a bug: please report it with the traceback it prints);
2 bad input (a config, a data file, a run folder, a model name: one line says what and how to fix it);
130 interrupted (Ctrl-C: the run folder is left resumable).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from functools import wraps
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(name="tunefuse", no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained backbones and fuse them into one predictor, from a YAML config.",
                  context_settings={"help_option_names": ["-h", "--help"]})

USER_ERRORS = (ValueError, OSError, UnicodeDecodeError)  # OSError: missing files, permissions, a full disk


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


def guarded(fn):
    """Bad input -> one line and exit 2; Ctrl-C -> exit 130; anything else is ours -> traceback and exit 1."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _err("interrupted; the run folder is resumable: run the same command again to continue")
            raise typer.Exit(130) from None
        except USER_ERRORS as e:
            _err(" ".join(str(e).split()) or type(e).__name__)
            raise typer.Exit(2) from None
        except Exception:  # noqa: BLE001 - a bug of ours: say so, with the traceback
            traceback.print_exc()
            _err("this is a failure inside tunefuse, not of your input; please report it with the traceback above")
            raise typer.Exit(1) from None

    return run


def _config(config: Path, sets: list[str] | None):
    from .runs.config import load_config

    return load_config(config, sets or [])


SetOption = typer.Option(None, "--set", "-s", help="override a config key, e.g. --set seed=1 --set "
                                                 "members[0].params.epochs=1 (values are YAML)")


@app.command()
@guarded
def fit(config: Path = typer.Argument(..., help="the YAML config, e.g. examples/reviews.yaml"),
        set_: Optional[list[str]] = SetOption,
        dry_run: bool = typer.Option(False, "--dry-run", help="check everything and say what would run; fit nothing"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines"),
        mlflow: Optional[str] = typer.Option(None, "--mlflow", help="also log the finished run to this MLflow "
                                             "tracking URI, e.g. file:./mlruns or http://host:5000"),
        experiment: str = typer.Option("tunefuse", help="the MLflow experiment name (with --mlflow)"),
        executor: Optional[str] = typer.Option(None, "--executor", help="where members and trials are fitted: "
                                               "local (this process) or ray (one Ray task each); default: the "
                                               "config's executor.kind"),
        address: Optional[str] = typer.Option(None, "--address", help="the Ray cluster (implies --executor ray): "
                                              "auto joins this machine's running cluster, ray://host:10001 a remote "
                                              "one; default: start a local one")):
    """Fit the config's members and fusions into its output folder; the same command again resumes it."""
    from .runs.experiment import dry_run as plan, fit_run

    sets = list(set_ or [])
    if address is not None and executor == "local":
        from .runs.config import ConfigError

        raise ConfigError(f"--address {address} is a Ray cluster, and --executor local fits in this process; "
                          "fix: --executor ray, or drop --address")
    executor = "ray" if address is not None and executor is None else executor  # an address means Ray
    sets += [f"executor.kind={executor}"] if executor is not None else []
    sets += [f"executor.address={address}"] if address is not None else []
    cfg = _config(config, sets)
    if dry_run:
        typer.echo(plan(cfg))
        return
    if mlflow is not None:  # say so before hours of fitting, not after
        from .runs.tracking import check_mlflow

        check_mlflow(mlflow)
    say = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg))
    if quiet:  # Ray workers too: their lines are not forwarded (they stay in RUN/logs)
        os.environ["TUNEFUSE_QUIET"] = "1"
    result = fit_run(cfg, say=say)
    if quiet:
        typer.echo(f"chosen: {result.verdict.chosen}")
    if mlflow is not None:
        from .runs.tracking import log_to_mlflow

        run_id = log_to_mlflow(result.run, cfg, result.board, result.verdict, mlflow, experiment)
        typer.echo(f"logged to MLflow ({mlflow}), run {run_id}")


@app.command()
@guarded
def validate(config: Path = typer.Argument(..., help="the YAML config"), set_: Optional[list[str]] = SetOption,
             data: bool = typer.Option(True, "--data/--no-data", help="also read the data files")):
    """Check a config (keys, values, members' parameters, and the data files) without fitting anything."""
    from .runs.experiment import task_entry
    from .runs.inputs import load_data

    cfg = _config(config, set_)
    task_entry(cfg)
    msg = f"{config}: valid; {len(cfg.expanded_members())} member(s), {len(cfg.fusions)} fusion(s) -> {cfg.output}"
    if data:
        msg += f"; data: {load_data(cfg).sizes()}"
    typer.echo(msg)


@app.command()
@guarded
def rank(config: Path = typer.Argument(..., help="the YAML config whose task and data to rank on"),
         candidate: Optional[list[str]] = typer.Option(None, "--candidate", "-c", help="a backbone (repeat it); "
                                                       "default: auto.candidates and the members' backbones"),
         max_rows: int = typer.Option(2000, min=20, help="labelled rows to score on (a stratified subsample)"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the table here (.csv)"),
         set_: Optional[list[str]] = SetOption):
    """Rank candidate backbones on the config's training rows before fine-tuning any: LogME and a cross-validated
    linear probe on frozen features, with time, size, inference cost and licence."""
    from .runs.config import CLASSICAL
    from .runs.experiment import task_entry
    from .runs.inputs import load_data
    from .selection import rank_backbones

    cfg = _config(config, set_)
    listed = []
    if cfg.auto is not None:
        from .runs.auto import default_candidates

        listed = cfg.auto.candidates or default_candidates(task_entry(cfg))
    names = list(dict.fromkeys(candidate or listed + [m.backbone for m in cfg.members if m.backbone not in CLASSICAL]))
    if any(not n.strip() for n in names):
        raise ValueError("--candidate '' is empty; fix: pass a backbone name, e.g. --candidate minilm-l6")
    if not names:
        raise ValueError(f"{config}: no backbone to rank (its members are classical baselines); fix: pass "
                         "--candidate NAME, e.g. --candidate minilm-l6 --candidate mpnet-base")
    if out is not None and out.suffix != ".csv":
        raise ValueError(f"--out {str(out)!r} must end in .csv; fix: e.g. --out rank.csv")
    data = load_data(cfg)
    table = rank_backbones(names, data.X_train, data.y_train, task=task_entry(cfg), max_rows=max_rows)
    typer.echo(f"ranked {len(names)} backbone(s) on {table.attrs['rows']} rows of {cfg.task} (best LogME first):")
    hidden = ["licence"] + ([] if table["error"].any() else ["error"])
    typer.echo(table.drop(columns=hidden).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if out is not None:
        from .runs.folder import atomic_write

        atomic_write(out, table.to_csv(index=False))
        typer.echo(f"written: {out}")


def _open_run(run: Path):
    from .runs.config import load_config
    from .runs.folder import RunFolder

    folder = RunFolder(run)
    meta = folder.read_run()
    return folder, meta, load_config(folder.config_file)


@app.command()
@guarded
def predict(run: Path = typer.Argument(..., help="a run folder written by `tunefuse fit`"),
            data: Path = typer.Argument(..., help="examples in the run's data format (labels not needed)"),
            model: Optional[str] = typer.Option(None, "--model", "-m", help="a member or fusion; default: the "
                                                                            "verdict's chosen model"),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="a .csv or .jsonl file; default: "
                                               "RUN/predictions/MODEL.DATA.jsonl")):
    """Predict DATA with a run's model; writes one row an example (see tunefuse.runs.evaluate for the format)."""
    from .runs.evaluate import load_model, write_prediction_file
    from .runs.experiment import task_entry
    from .runs.inputs import read_examples

    folder, meta, cfg = _open_run(run)
    name = model or meta.get("chosen")
    if not name:
        raise ValueError(f"run {str(run)!r} has no chosen model yet (its fit did not finish); fix: finish it with "
                         "`tunefuse fit`, or pass --model NAME")
    if out is not None and out.suffix not in (".csv", ".jsonl"):
        raise ValueError(f"--out {str(out)!r}: the suffix must be .csv or .jsonl; fix: e.g. --out predictions.csv")
    task = task_entry(cfg)
    X, _ = read_examples(task.name, str(data), cfg.data, "DATA", labelled=False)
    est = load_model(folder, name)
    path = out or folder.path / "predictions" / f"{name}.{data.stem}.jsonl"
    write_prediction_file(path, task, est, X)
    typer.echo(f"{len(X)} predictions of {name} written to {path}")


@app.command()
@guarded
def evaluate(run: Path = typer.Argument(..., help="a run folder"),
             data: Path = typer.Argument(..., help="labelled examples in the run's data format"),
             model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="models to score (default: all)")):
    """Score a run's models on labelled DATA with the task's metric."""
    from .runs.evaluate import score_models
    from .runs.experiment import task_entry
    from .runs.inputs import read_examples

    folder, meta, cfg = _open_run(run)
    task = task_entry(cfg)
    X, y = read_examples(task.name, str(data), cfg.data, "DATA", labelled=True)
    typer.echo(score_models(folder, task, X, y, model or None).to_string(index=False))


@app.command()
@guarded
def report(run: Path = typer.Argument(..., help="a run folder whose fit finished")):
    """Rewrite RUN/report.html (and the leaderboard) from the run's saved members."""
    from .runs.experiment import fit_run

    folder, meta, cfg = _open_run(run)
    if meta.get("status") != "done":
        raise ValueError(f"run {str(run)!r} has not finished (status {meta.get('status')!r}); fix: run `tunefuse fit "
                         f"{folder.config_file}` to finish it, which writes the report")
    cfg = cfg.model_copy(update={"output": str(folder.path)})
    result = fit_run(cfg, say=lambda m: None, refit=False)
    typer.echo(f"report: {result.run.path / 'report.html'}")


@app.command()
@guarded
def export(run: Path = typer.Argument(..., help="a run folder"),
           model: Optional[str] = typer.Option(None, "--model", "-m", help="a member or a soup; default: the chosen "
                                                                           "model"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="the export folder; default: "
                                                                        "RUN/export/MODEL"),
           int8: bool = typer.Option(False, "--int8", help="also write model.int8.onnx (dynamic int8 quantisation, "
                                                           "text models), checked on the validation rows"),
           min_agreement: float = typer.Option(0.97, min=0, max=1, help="with --int8: the least share of validation "
                                                                         "rows whose label must match fp32's")):
    """Export one network (a member or a soup) to ONNX with its tokenizer.json or preprocessing spec and an example
    that runs it with onnxruntime alone; checked against torch within 1e-4 (the int8 model: by label agreement with
    fp32 and accuracy on the validation rows)."""
    from .export import export_onnx
    from .runs.evaluate import load_model

    folder, meta, cfg = _open_run(run)
    name = model or meta.get("chosen")
    if not name:
        raise ValueError(f"run {str(run)!r} has no chosen model yet; fix: finish its fit, or pass --model NAME")
    est = load_model(folder, name)
    images = check_texts = check_labels = None
    modality = getattr(getattr(est, "task_", None), "modality", "")
    if modality == "vision" or (int8 and modality == "text"):
        from .runs.inputs import load_data

        data = load_data(cfg)
        if modality == "vision":
            images = list(data.X_val[:4])
        else:  # the int8 check: up to 1,000 validation rows
            check_texts = est.task_.check_X(data.X_val, "X_val")[:1000]
            check_labels = list(data.y_val)[:len(check_texts)]
    target = out or folder.path / "export" / name
    check = export_onnx(est, target, images=images, int8=int8, check_texts=check_texts, check_labels=check_labels,
                        min_agreement=min_agreement)
    typer.echo(f"{name} exported to {target} (ONNX vs torch: max |difference| {check['max_abs_diff']:.1e} on "
               f"{check['rows']} inputs); run: python {target / 'example.py'}")
    if "int8" in check:
        q = check["int8"]
        acc = (f"; accuracy {q['int8_accuracy']:.4f} int8 vs {q['fp32_accuracy']:.4f} fp32"
               if "int8_accuracy" in q else "")
        typer.echo(f"model.int8.onnx ({q['size_mb']} MB vs {q['fp32_size_mb']} MB): its label agrees with fp32 on "
                   f"{q['label_agreement']:.1%} of {q['rows']} validation rows{acc}; example.py runs it")


@app.command()
@guarded
def serve(run: Path = typer.Argument(..., help="a run folder"),
          model: Optional[str] = typer.Option(None, "--model", "-m", help="a member or fusion; default: the chosen "
                                                                          "model"),
          host: str = typer.Option("127.0.0.1", help="the address to listen on"),
          port: int = typer.Option(8000, min=1, max=65535),
          max_batch: Optional[int] = typer.Option(None, min=1, help="inputs a forward pass at most (dynamic "
                                                  "batching); default 128, 16 for image tasks"),
          max_wait_ms: float = typer.Option(20.0, min=0, help="how long a request waits for others to batch with"),
          max_bytes: Optional[int] = typer.Option(None, min=1, help="the largest request body; default 2 MiB, "
                                                                     "64 MiB for image tasks")):
    """Serve a run's model over HTTP: POST /predict {"inputs": [...]}, GET /health, GET /metadata. Image tasks take
    base64 image files as inputs."""
    from .serve import serve as run_server

    run_server(run, model, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_bytes=max_bytes)


LISTS = ("backbones", "tasks", "strategies", "fusions", "datasets")


@app.command("list")
@guarded
def list_(what: Optional[str] = typer.Argument(None, help=f"one of {', '.join(LISTS)}; default: all")):
    """Backbones (with licences), tasks, strategies, fusion methods (with papers) and named datasets."""
    if what is not None and what not in LISTS:
        from .runs.config import closest

        raise ValueError(f"list {what!r} is not valid; valid: {list(LISTS)}{closest(what, LISTS)}")
    for section in [what] if what else LISTS:
        typer.echo(f"{section}:")
        for line in _listing(section):
            typer.echo(f"  {line}")


def _listing(section: str) -> list[str]:
    if section == "backbones":
        from .backbones import BACKBONES

        return [f"{b.name:<20} {b.modality:<8} {b.params_m:>6.1f} M  {b.license}" for b in BACKBONES.values()] + [
            f"{'scratch':<20} {'ctr':<8} {'':>6}    a CTR network from random weights",
            f"{'tfidf-logreg':<20} {'text':<8} {'':>6}    baseline: TF-IDF + logistic regression (scikit-learn)",
            f"{'ctr-lr / ctr-hgb':<20} {'ctr':<8} {'':>6}    baselines: logistic regression / gradient boosting"]
    if section == "tasks":
        from .tasks import ALIASES, TASKS

        alias = {}
        for a, t in ALIASES.items():
            alias.setdefault(t, []).append(a)
        return [f"{n:<22} {t.modality:<8} aliases: {', '.join(alias.get(n, [])) or '-'}" for n, t in TASKS.items()]
    if section == "strategies":
        from .strategies import STRATEGIES

        return [f"{s.name:<8} {s.paper}" for s in STRATEGIES.values()]
    if section == "fusions":
        from .fusion import FUSION_METHODS

        return [f"{m.name:<20} {m.kind:<7} {m.paper}" for m in FUSION_METHODS.values()]
    from .runs.inputs import NAMED, package_licence

    return [f"{n:<16} {t:<22} {d} ({package_licence(n)})" for n, (t, d) in NAMED.items()]


@app.command()
@guarded
def schema(out: Optional[Path] = typer.Option(None, "--out", "-o", help="write it here instead of stdout")):
    """The config's JSON schema, for editors (yaml-language-server: $schema=...)."""
    from .runs.config import config_schema
    from .runs.folder import atomic_write

    text = json.dumps(config_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write(out, text)
        typer.echo(f"schema written to {out}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="tunefuse")


if __name__ == "__main__":
    sys.exit(main())
