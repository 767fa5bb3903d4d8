"""A corpus of bad input for the tunefuse command: configs, data files, run folders and arguments.

Each case gets exit code 2, one line on stderr that names what is wrong and the fix, no traceback, and leaves every
file that existed before it intact. Run in-process with typer's test runner (a few run as real processes in
test_cli.py); the config loader is fuzzed with hypothesis.
"""
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunefuse.cli import app

GOOD = {"task": "text-classification", "data": {"train": "DATA"},
        "members": [{"name": "m", "backbone": "minilm-l6", "strategy": "full", "params": {"epochs": 1},
                     "grid": {"random_state": [0, 1]}}, {"name": "tfidf", "backbone": "tfidf-logreg"}],
        "fusions": [{"method": "stacking"}], "output": "OUT"}


def config(tmp: Path, train: str | None = None, **changes) -> Path:
    """GOOD with ``changes`` (dotted keys; None deletes), data.train -> ``train`` (default: a good CSV)."""
    doc = json.loads(json.dumps(GOOD))
    doc["data"]["train"] = train or str(good_csv(tmp))
    doc["output"] = str(tmp / "out")
    for key, value in changes.items():
        node, parts = doc, key.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def good_csv(tmp: Path) -> Path:
    path = tmp / "good.csv"
    if not path.exists():
        pd.DataFrame({"text": ["great dress", "awful fit", "love it", "poor quality"] * 5,
                      "label": [1, 0, 1, 0] * 5}).to_csv(path, index=False)
    return path


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def fake_run(tmp: Path, run_json: str | None = '{"format": "tunefuse.run/1", "status": "done", "chosen": "m"}'):
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    if run_json is not None:
        (run / "run.json").write_text(run_json)
    write(tmp, "run/config.yaml", config(tmp).read_text())
    return run


# (id, build(tmp) -> argv, substring the error line must hold)
CASES = [
    # configs
    ("config-missing", lambda t: ["validate", t / "nope.yaml"], "does not exist"),
    ("config-empty", lambda t: ["validate", write(t, "e.yaml", "")], "is empty"),
    ("config-bad-yaml", lambda t: ["validate", write(t, "b.yaml", "task: [\n  - x\n bad")], "not valid YAML"),
    ("config-a-list", lambda t: ["validate", write(t, "l.yaml", "- a\n- b\n")], "not a mapping"),
    ("config-not-utf8", lambda t: ["validate", write(t, "u.yaml", b"task: caf\xe9\n")], "not UTF-8"),
    ("config-a-folder", lambda t: ["validate", t], "not a file"),
    ("unknown-top-key", lambda t: ["validate", config(t, membres=[])], "did you mean 'members'"),
    ("unknown-data-key", lambda t: ["validate", config(t, **{"data.colums": {}})], "did you mean 'columns'"),
    ("bad-task", lambda t: ["validate", config(t, task="text-clasification")], "did you mean 'text-classification'"),
    ("bad-strategy", lambda t: ["validate", config(t, **{"members.0.strategy": "lpft"})], "did you mean 'lp-ft'"),
    ("bad-backbone", lambda t: ["validate", config(t, **{"members.0.backbone": "minilm-l7"})],
     "did you mean 'minilm-l6'"),
    ("unknown-param", lambda t: ["validate", config(t, **{"members.0.params": {"epoch": 2}})],
     "did you mean 'epochs'"),
    ("bad-param-value", lambda t: ["validate", config(t, **{"members.0.params": {"epochs": 0}})], "epochs=0"),
    ("bad-lr-type", lambda t: ["validate", config(t, **{"members.0.params": {"lr": "fast"}})], "lr='fast'"),
    ("bad-fusion", lambda t: ["validate", config(t, **{"fusions.0.method": "stack"})], "did you mean 'stacking'"),
    ("fusion-unknown-member", lambda t: ["validate", config(t, **{"fusions.0.members": ["m-random_state=9"]})],
     "fusions[0].members"),
    ("duplicate-member", lambda t: ["validate", config(t, **{"members.1.name": "m-random_state=0"})],
     "more than once"),
    ("no-members", lambda t: ["validate", config(t, members=[])], "members: none given"),
    ("missing-data", lambda t: ["validate", config(t, data=None)], "required key is missing"),
    ("bad-fraction", lambda t: ["validate", config(t, **{"data.validation_fraction": 1.5})], "less than 1"),
    ("bad-format", lambda t: ["validate", config(t, **{"data.format": "xls"})], "data.format='xls'"),
    ("bad-selection", lambda t: ["validate", config(t, selection="best")], "selection='best'"),
    ("seed-not-int", lambda t: ["validate", config(t, seed="abc")], "seed='abc'"),
    ("baseline-wrong-task", lambda t: ["validate", config(t, **{"members.1.backbone": "ctr-hgb"})],
     "not one for task"),
    ("empty-grid", lambda t: ["validate", config(t, **{"members.0.grid": {"random_state": []}})], "has no values"),
    ("soup-of-one", lambda t: ["validate", config(t, **{"fusions.0.method": "greedy_soup",
                                                        "members.0.grid": {}})], "merges the weights"),
    ("bad-task-option", lambda t: ["validate", config(t, task_options={"stridee": 3})], "unknown option"),
    ("set-no-equals", lambda t: ["validate", config(t), "--set", "seed"], "is not key=value"),
    ("set-bad-index", lambda t: ["validate", config(t), "--set", "members[5].name=x"], "out of range"),
    ("set-bad-value", lambda t: ["validate", config(t), "--set", "members[0].params.epochs=-1"], "epochs=-1"),
    # data files
    ("data-missing", lambda t: ["validate", config(t, train=str(t / "nope.csv"))], "does not exist"),
    ("data-empty", lambda t: ["validate", config(t, train=str(write(t, "e.csv", "")))], "is empty"),
    ("data-header-only", lambda t: ["validate", config(t, train=str(write(t, "h.csv", "text,label\n")))],
     "no rows"),
    ("wrong-text-column", lambda t: ["validate", config(t, **{"data.columns": {"text": "txt"}})],
     "no column 'txt'"),
    ("wrong-label-column", lambda t: ["validate", config(t, **{"data.columns": {"label": "rating"}})],
     "no column 'rating'"),
    ("mixed-labels", lambda t: ["validate", config(t, train=str(write(t, "m.jsonl", '{"text": "a", "label": 1}\n'
                                                                   '{"text": "b", "label": "pos"}\n')))],
     "mixes numbers and text"),
    ("data-not-utf8", lambda t: ["validate", config(t, train=str(write(t, "l.csv", b"text,label\ncaf\xe9,1\n")))],
     "not UTF-8"),
    ("unknown-suffix", lambda t: ["validate", config(t, train=str(write(t, "d.xls", "x")))], "set data.format"),
    ("threshold-on-text", lambda t: ["validate", config(t, train=str(write(t, "s.csv", "text,label\na,pos\nb,neg\n"
                                                                          "c,pos\nd,neg\n")),
                                                        **{"data.label_threshold": 4})], "needs numeric labels"),
    ("dataset-wrong-task", lambda t: ["validate", config(t, train="wnut16")], "token-classification dataset"),
    ("dataset-bad-option", lambda t: ["validate", config(t, train="reviews", **{"data.options": {"n_tran": 5}})],
     "not options of the 'reviews' dataset"),
    ("dataset-unknown", lambda t: ["validate", config(t, train="reviewz")], "did you mean 'reviews'"),
    ("broken-parquet", lambda t: ["validate", config(t, train=str(write(t, "b.parquet", b"not parquet")))],
     "could not be read as parquet"),
    ("broken-jsonl", lambda t: ["validate", config(t, train=str(write(t, "b.jsonl", '{"text": "a",\n')))],
     "could not be read as jsonl"),
    ("data-a-folder", lambda t: ["validate", config(t, train=str(t))], "is a folder"),
    ("conll-bad-tag", lambda t: ["validate", config(t, task="ner", train=str(write(t, "n.conll", "EU X-ORG\nx O\n")),
                                                    **{"members.1.backbone": "minilm-l6", "members.1.strategy":
                                                       "head"})], "n.conll"),
    ("squad-bad-json", lambda t: ["validate", config(t, task="qa", train=str(write(t, "q.json", "{")),
                                                     **{"members.1.backbone": "minilm-l6",
                                                        "members.1.strategy": "full"})], "not valid JSON"),
    ("one-class-image-folder", lambda t: ["validate", config(t, task="image", train=str(write(
        t, "imgs/cat/a.png", b"x").parent.parent), **{"members.0.backbone": "mobilenet-v2",
                                                      "members.1.backbone": "mobilenet-v2",
                                                      "members.1.strategy": "head"})], "at least 2"),
    # run folders and their commands
    ("run-missing", lambda t: ["predict", t / "norun", good_csv(t)], "does not exist"),
    ("not-a-run", lambda t: ["predict", write(t, "plain/x.txt", "x").parent, good_csv(t)], "no run.json"),
    ("run-other-version", lambda t: ["predict", fake_run(t, '{"format": "tunefuse.run/99"}'), good_csv(t)],
     "does not read"),
    ("run-json-damaged", lambda t: ["predict", fake_run(t, '{"format": "tunefu'), good_csv(t)], "is damaged"),
    ("model-unknown", lambda t: ["predict", fake_run(t), good_csv(t), "--model", "stakcing"], "not a fitted model"),
    ("model-outside-run", lambda t: ["predict", fake_run(t), good_csv(t), "--model", "../../etc"],
     "outside the run folder"),
    ("predict-bad-suffix", lambda t: ["predict", fake_run(t), good_csv(t), "--out", t / "p.txt"],
     "must be .csv or .jsonl"),
    ("predict-missing-data", lambda t: ["predict", fake_run(t), t / "nope.csv"], "does not exist"),
    ("report-unfinished", lambda t: ["report", fake_run(t, '{"format": "tunefuse.run/1", "status": "running"}')],
     "has not finished"),
    ("evaluate-no-labels", lambda t: ["evaluate", fake_run(t), write(t, "nl.csv", "text\na\nb\n")],
     "no column 'label'"),
    ("list-unknown", lambda t: ["list", "backbone"], "did you mean 'backbones'"),
    ("output-foreign-folder", lambda t: ["fit", config(t, output=str(write(t, "mine/notes.txt", "x").parent))],
     "not a tunefuse run"),
    ("output-is-a-file", lambda t: ["fit", config(t, output=str(write(t, "afile", "x")))], "is a file"),
    ("param-owned-by-run", lambda t: ["validate", config(t, **{"members.0.params": {"checkpoint_every_s": 5}})],
     "unknown parameter 'checkpoint_every_s'"),
    ("grid-unsafe-name", lambda t: ["validate", config(t, **{"members.0.grid": {"template": ["a/{text}"]}})],
     "not folder-safe"),
    ("soup-mixed-backbones", lambda t: ["validate", config(t, **{"fusions.0.method": "uniform_soup",
                                                                 "members.1.backbone": "smollm2-135m",
                                                                 "members.1.strategy": "head",
                                                                 "members.0.grid": {},
                                                                 "fusions.0.members": ["m", "tfidf"]})],
     "mixes backbones"),
    ("predict-row-without-text", lambda t: ["predict", fake_run(t), write(t, "gap.csv", "text,n\na,1\n,2\nb,3\n")],
     "have no text"),
    ("ner-from-csv", lambda t: ["validate", config(t, task="ner", train=str(write(t, "n.csv", "tokens,tags\na,O\n")),
                                                   **{"members.1.backbone": "minilm-l6",
                                                      "members.1.strategy": "head"})], "CSV cannot hold"),
]


def snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_exit_2_and_one_line_naming_the_fix(tmp_path, case, build, expected):
    argv = [str(a) for a in build(tmp_path)]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, f"{case}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, f"{case}: not one line:\n{err}"
    assert "Traceback" not in result.output
    assert expected in err, f"{case}: {expected!r} not in {err!r}"
    assert snapshot(tmp_path) == before, f"{case}: files changed"


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


def test_a_truncated_member_checkpoint_is_a_clear_error(tmp_path):
    """A real run whose member's weights were cut short: predict says which model, and how to refit it."""
    from tunefuse.runs.config import load_config
    from tunefuse.runs.experiment import fit_run

    cfg = load_config(config(tmp_path, members=[{"name": "tfidf", "backbone": "tfidf-logreg"}], fusions=[]))
    fit_run(cfg, say=lambda m: None)
    skops = next((tmp_path / "out" / "members" / "tfidf").glob("*.skops"))
    skops.write_bytes(skops.read_bytes()[:100])
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "out"), str(good_csv(tmp_path))])
    assert result.exit_code == 2 and "files are damaged" in result.stderr and "fix: delete members/tfidf" in \
        result.stderr
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------- fuzzing

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) |
                       st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_keys = st.sampled_from(["task", "data", "members", "fusions", "seed", "output", "selection", "task_options",
                         "checkpoint_every_s", "junk"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(_keys, _values, max_size=6))
def test_fuzzed_configs_raise_only_config_errors(doc):
    from tunefuse.runs.config import Config, ConfigError, validate

    try:
        assert isinstance(validate(doc), Config)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_fuzzed_yaml_text_raises_only_config_errors(tmp_path, text):
    from tunefuse.runs.config import ConfigError, load_config

    path = tmp_path / "f.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as e:
        assert str(e)


@settings(max_examples=60, deadline=None)
@given(member=st.fixed_dictionaries({}, optional={
    "backbone": st.sampled_from(["minilm-l6", "nope", "tfidf-logreg", "org/model"]),
    "strategy": st.sampled_from(["full", "head", "lp-ft", "lora", "bad"]),
    "params": st.dictionaries(st.sampled_from(["epochs", "lr", "batch_size", "dropout", "bogus"]), _scalars,
                              max_size=3),
    "grid": st.dictionaries(st.sampled_from(["random_state", "lr"]), st.lists(_scalars, max_size=2), max_size=1)}))
def test_fuzzed_members_raise_only_config_errors(member):
    from tunefuse.runs.config import ConfigError, validate

    try:
        validate({"data": {"train": "reviews"}, "members": [member]})
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()


def test_cases_leave_no_stray_run_folder(tmp_path):
    """validate never creates the output folder."""
    CliRunner().invoke(app, ["validate", str(config(tmp_path))])
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_folder_swap_killed_between_its_renames_is_repaired(tmp_path):
    """checkpoint.atomic_folder moves the old folder aside, then the new one in: a kill between the two leaves
    only the old copy, hidden; the next fit's clean-up puts it back instead of deleting it."""
    from tunefuse.runs.folder import RunFolder

    run = RunFolder(tmp_path / "run")
    hidden = run.path / "state" / "m" / ".stage-full.old-abc"
    (hidden / "stage-full").mkdir(parents=True)
    (hidden / "stage-full" / "training_state.json").write_text("{}")
    (run.path / "state" / "m" / ".stage-full.tmp-def").mkdir()  # the new copy, never renamed in
    run.clean_temp()
    assert (run.path / "state" / "m" / "stage-full" / "training_state.json").is_file()
    assert [p.name for p in (run.path / "state" / "m").iterdir()] == ["stage-full"]
