"""The tunefuse command: a real tiny fit into a run folder (shared by the tests here), predict, evaluate, report, list,
schema, the lock, resume after a kill, the report rendered in a real browser, the example configs."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tunefuse.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TINY_PARAMS = {"epochs": 2, "config_overrides": {"num_hidden_layers": 1}}


def tiny_config(out, **extra) -> dict:
    cfg = {"task": "text-classification",
           "data": {"train": "reviews", "options": {"n_train": 160, "n_test": 80}},
           "members": [{"name": "ft", "backbone": "minilm-l6", "strategy": "full", "params": dict(TINY_PARAMS),
                        "grid": {"random_state": [0, 1]}},
                       {"name": "tfidf", "backbone": "tfidf-logreg"}],
           "fusions": [{"method": "stacking"}, {"method": "vote_soft"},
                       {"method": "greedy_soup", "members": ["ft-random_state=0", "ft-random_state=1"]}],
           "seed": 0, "output": str(out)}  # training state saved at each epoch's end
    cfg.update(extra)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One real run of the tiny config (2 one-layer MiniLM members, TF-IDF, 3 fusions), fitted once for the module."""
    root = tmp_path_factory.mktemp("cli")
    cfg = write_config(root / "tiny.yaml", tiny_config(root / "run"))
    result = invoke("fit", cfg, "--quiet")
    assert result.exit_code == 0, result.output
    return root / "run", cfg


def test_fit_writes_the_documented_run_folder(fitted_run):
    run, _ = fitted_run
    for name in ("config.yaml", "run.json", "metrics.jsonl", "leaderboard.csv", "report.html", "verdict.txt",
                 "calibration.json"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "run.json").read_text())
    assert meta["format"] == "tunefuse.run/1" and meta["status"] == "done"
    assert {"tunefuse", "torch", "transformers"} <= set(meta["versions"])
    board = pd.read_csv(run / "leaderboard.csv")
    assert set(board["model"]) == {"ft-random_state=0", "ft-random_state=1", "tfidf", "stacking", "vote_soft",
                                   "greedy_soup"}
    assert board["val_se"].gt(0).all() and board["test_score"].between(0, 1).all()
    modes = dict(zip(board["model"], board["val_mode"]))
    assert modes["stacking"] == modes["greedy_soup"] == "cross-fitted" and modes["vote_soft"] == "held-out"
    assert {"ece", "ece_temperature"} <= set(board.columns)
    assert meta["chosen"] in set(board["model"])
    for name in board["model"]:  # test predictions of every model, one row a test review
        pred = pd.read_csv(run / "predictions" / f"{name}.csv")
        assert len(pred) == 80 and {"id", "prediction", "proba_0", "proba_1"} <= set(pred.columns)
        np.testing.assert_allclose(pred[["proba_0", "proba_1"]].sum(axis=1), 1, atol=1e-5)
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("member") == 3 and "epoch" in events and events[-1] == "done"
    assert not any((run / "state").rglob("*.safetensors")), "finished members leave no training state"
    # the greedy soup's saved fusion references the run's members instead of copying them
    assert (run / "fusions" / "stacking" / "model" / "members").is_dir()
    assert not list((run / "fusions" / "stacking" / "model" / "members").rglob("*.safetensors"))
    html = (run / "report.html").read_text()
    assert "Verdict." in html and html.count("data:image/png;base64,") >= 5 and "<table>" in html


def test_members_keep_their_validation_and_test_probabilities_and_the_driver_replays_them(fitted_run):
    """Each classifier member's folder holds its probabilities on the run's validation and test rows (computed where
    it was fitted: a Ray worker); read back, the member replays them without a forward pass, and a changed test
    set is predicted again."""
    from safetensors.numpy import load_file

    from tunefuse.runs.config import load_config
    from tunefuse.runs.experiment import read_member
    from tunefuse.runs.inputs import load_data

    run, cfg = fitted_run
    s = load_data(load_config(cfg))
    for name in ("ft-random_state=0", "ft-random_state=1", "tfidf"):
        saved = load_file(str(run / "members" / name / "split_proba.safetensors"))
        assert saved["val"].shape == (len(s.X_val), 2) and saved["test"].shape == (len(s.X_test), 2)
        test_csv = pd.read_csv(run / "predictions" / f"{name}.csv")[["proba_0", "proba_1"]].to_numpy()
        np.testing.assert_allclose(saved["test"], test_csv, rtol=1e-6)  # what the leaderboard scored
        member = read_member(run / "members" / name, s)
        member.estimator.predict_proba = lambda X: pytest.fail("a saved prediction was computed again")
        assert np.array_equal(member.predict_proba(s.X_val.iloc[::3]), saved["val"][::3])  # a fold: by rows
        assert np.array_equal(member.predict_proba(s.X_test), saved["test"]) and member.replayed_s > 0
    other = s.X_test.assign(text=s.X_test["text"] + " !")  # the test file changed since the fit
    fresh = read_member(run / "members" / "tfidf", dataclasses.replace(s, X_test=other))
    asked = []
    inner = fresh.estimator.predict_proba
    fresh.estimator.predict_proba = lambda X: asked.append(len(X)) or inner(X)
    assert fresh.predict_proba(other).shape == (len(other), 2) and asked == [len(other)]
    fresh.predict_proba(s.X_val)
    assert asked == [len(other)]  # the validation rows are still the run's: replayed


def test_a_run_scores_and_fuses_its_members_without_reading_their_models(fitted_run, tmp_path, monkeypatch):
    """`tunefuse report` of a run with output-space fusions only: the leaderboard, stacking, the vote, the verdict
    and the report come from the members' saved probabilities; no member model is read from disk (a driver of
    hundreds of members holds arrays). Same leaderboard as the run's own."""
    import tunefuse.fusion.persist as persist
    from tunefuse.runs.config import load_config
    from tunefuse.runs.experiment import fit_run

    run, cfg = fitted_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    doc = yaml.safe_load(cfg.read_text())
    doc.update(output=str(copy), fusions=[f for f in doc["fusions"] if f["method"] != "greedy_soup"])
    read = []
    real = persist.load_member
    monkeypatch.setattr(persist, "load_member", lambda path, **kw: read.append(Path(path).name) or real(path, **kw))
    result = fit_run(load_config(doc), say=lambda m: None, refit=False)
    assert read == [], f"member models read from disk: {read}"
    board = result.board.set_index("model")
    before = pd.read_csv(run / "leaderboard.csv").set_index("model")
    for name in ("ft-random_state=0", "ft-random_state=1", "tfidf", "stacking", "vote_soft"):
        assert board.loc[name, "val_score"] == pytest.approx(before.loc[name, "val_score"])
        assert board.loc[name, "test_score"] == pytest.approx(before.loc[name, "test_score"])
        assert board.loc[name, "size_mb"] == pytest.approx(before.loc[name, "size_mb"], rel=0.01)
    member = result.models["ft-random_state=0"]
    assert not member.loaded and member.predict(result.splits.X_test[:4]).shape == (4,)
    assert member.backbone == "minilm-l6" and not member.loaded  # known without reading the model
    assert member.model_ is not None and member.loaded  # the weights: read on demand


@pytest.mark.slow
def test_second_fit_skips_every_member_and_reproduces_the_predictions(fitted_run):
    run, cfg = fitted_run
    before = {p.name: p.read_bytes() for p in (run / "predictions").glob("*.csv")}
    result = invoke("fit", cfg)
    assert result.exit_code == 0, result.output
    assert result.output.count("fitted already") == 3
    assert {p.name: p.read_bytes() for p in (run / "predictions").glob("*.csv")} == before


def test_predict_and_evaluate_on_a_csv_file(fitted_run, tmp_path, reviews):
    run, _ = fitted_run
    _, _, Xt, yt = reviews
    data = tmp_path / "new.csv"
    pd.DataFrame({"text": Xt["text"][:20], "label": yt[:20]}).to_csv(data, index=False)
    out = tmp_path / "pred.csv"
    result = invoke("predict", run, data, "--out", out)
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out)
    assert len(pred) == 20 and set(pred["prediction"]) <= {0, 1}
    result = invoke("predict", run, data, "--model", "stacking")
    assert result.exit_code == 0, result.output
    lines = (run / "predictions" / "stacking.new.jsonl").read_text().splitlines()
    assert len(lines) == 20 and set(json.loads(lines[0])) == {"id", "prediction", "proba"}
    result = invoke("evaluate", run, data)
    assert result.exit_code == 0, result.output
    assert "greedy_soup" in result.output and "accuracy" in result.output


@pytest.mark.slow
def test_report_rewrites_the_report(fitted_run):
    run, _ = fitted_run
    (run / "report.html").unlink()
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert (run / "report.html").stat().st_size > 20_000


def chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no headless Chromium: `make test` installs Debian's chromium-headless-shell package when it is "
                "missing (apt-get install chromium-headless-shell)")


def test_report_renders_in_a_real_browser(fitted_run, tmp_path):
    """Headless Chromium opens report.html and takes a screenshot; the picture is not blank."""
    from PIL import Image

    run, _ = fitted_run
    shot = tmp_path / "report.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1800", f"--screenshot={shot}", (run / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (1800, 1200)
    assert img.std() > 20, "the screenshot is blank"
    dark = (img < 128).mean()
    assert 0.01 < dark < 0.5, f"{dark:.3f} of the page is dark: text and figures should be drawn"
    keep = ROOT / "runs" / "report_screenshot.png"  # kept for a person to look at
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)


def test_dry_run_fits_nothing_and_says_what_it_would_do(fitted_run, tmp_path):
    run, cfg = fitted_run
    result = invoke("fit", cfg, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("fitted (skipped)") == 3
    other = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "fresh"))
    result = invoke("fit", other, "--dry-run", "--set", "seed=3")
    assert result.exit_code == 0 and result.output.count("-> to fit") == 3
    assert not (tmp_path / "fresh").exists()


def test_validate_list_and_schema(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "r"))
    result = invoke("validate", cfg)
    assert result.exit_code == 0 and "valid; 3 member(s), 3 fusion(s)" in result.output
    result = invoke("list")
    assert result.exit_code == 0
    for text in ("backbones:", "apache-2.0", "fusions:", "Wolpert", "datasets:", "movielens-100k", "lp-ft"):
        assert text in result.output
    result = invoke("list", "fusions")
    assert result.exit_code == 0 and "greedy_soup" in result.output and "backbones:" not in result.output


def test_published_schema_is_current():
    """examples/tunefuse.schema.json is what `tunefuse schema` prints (regenerate it with `tunefuse schema -o`)."""
    from tunefuse.runs.config import config_schema

    published = json.loads((EXAMPLES / "tunefuse.schema.json").read_text())
    assert published == json.loads(json.dumps(config_schema()))
    assert published["additionalProperties"] is False and "data" in published["required"]


def test_a_second_fit_of_a_locked_run_folder_is_refused(tmp_path):
    from tunefuse.runs.folder import RunFolder

    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    with RunFolder(tmp_path / "run").lock():
        result = invoke("fit", cfg)
    assert result.exit_code == 2
    assert "is being written by another `tunefuse fit`" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("point,count", [("fusion", 2), ("save", 2)])  # steps, members: SIGKILL test, bench
def test_a_fit_killed_at_any_moment_resumes_to_the_uninterrupted_result(fitted_run, tmp_path, point, count):
    """A crash at an injection point (in-process: an exception in place of SIGKILL; bench/resume.py kills for real),
    then the same fit again: the same test predictions and leaderboard scores as the uninterrupted run."""
    from tunefuse import faults
    from tunefuse.runs.config import load_config
    from tunefuse.runs.experiment import fit_run

    reference, _ = fitted_run
    cfg = load_config(tiny_config(tmp_path / "run"))
    faults.arm(point, count, KeyboardInterrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_run(cfg, say=lambda m: None)
    finally:
        faults.disarm()
    fit_run(cfg, say=lambda m: None)
    for p in (reference / "predictions").glob("*.csv"):
        assert (tmp_path / "run" / "predictions" / p.name).read_bytes() == p.read_bytes(), p.name
    cols = ["model", "val_score", "val_se", "test_score", "ece"]
    a = pd.read_csv(reference / "leaderboard.csv")[cols].round(4)
    b = pd.read_csv(tmp_path / "run" / "leaderboard.csv")[cols].round(4)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_in_a_real_process(fitted_run, tmp_path):
    """kill -9 (SIGKILL from the fault point) inside a member's 2nd epoch; `tunefuse fit` again finishes identically."""
    reference, _ = fitted_run
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", fusions=[]))  # members only: faster
    env = dict(os.environ, TUNEFUSE_FAULT="step:11")  # epoch 2 of the first member: after its epoch-1 save
    cmd = [sys.executable, "-m", "tunefuse.cli", "fit", str(cfg), "--quiet"]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list((tmp_path / "run" / "state").rglob("training_state.json")), "no training state before the kill"
    env.pop("TUNEFUSE_FAULT")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "run" / "predictions").glob("*.csv"))
    assert written == ["ft-random_state=0.csv", "ft-random_state=1.csv", "tfidf.csv"]
    for name in written:
        assert (tmp_path / "run" / "predictions" / name).read_bytes() == \
            (reference / "predictions" / name).read_bytes(), name


@pytest.mark.slow
def test_real_subprocess_exit_codes(tmp_path):
    """The installed console script: 0 on success, 2 with one line on bad input, no traceback."""
    exe = shutil.which("tunefuse") or str(Path(sys.executable).with_name("tunefuse"))
    ok = subprocess.run([exe, "list", "tasks"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "token-classification" in ok.stdout
    bad = subprocess.run([exe, "validate", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
    usage = subprocess.run([exe, "fit"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2  # click's usage errors: a missing argument


# ------------------------------------------------------------------------------------------------ examples

SHRINK = {  # each example at tiny scale: (--set overrides)
    "reviews.yaml": ["data.options={n_train: 120, n_test: 40}", "members[0].params={epochs: 1, config_overrides: "
                     "{num_hidden_layers: 1}}", "members[1].params={config_overrides: {num_hidden_layers: 1}}",
                     "members[2].params.config_overrides={num_hidden_layers: 1}"],
    "ner.yaml": ["data.limit=100", "data.test_limit=30",
                 "members[0].params={epochs: 1, config_overrides: {num_hidden_layers: 1}}"],
    "qa.yaml": ["data.limit=50", "data.test_limit=20",
                "members[0].params={epochs: 1, config_overrides: {num_hidden_layers: 1}}"],
    "images.yaml": ["data.options={n_train: 250, n_test: 30}", "task_options.image_size=32",
                    "members[2].params={epochs: 1, batch_size: 32}"],
    "segmentation.yaml": ["data.options={n_train: 16, n_val: 6, n_test: 6, size: 64}", "task_options.image_size=64",
                          "members[0].params={epochs: 1, batch_size: 8}"],
    "detection.yaml": ["task_options={tile: null, image_size: 96}", "members[0].params={epochs: 1, batch_size: 1}",
                       "members[0].grid={random_state: [0]}", "fusions=[]"],
    "auto.yaml": ["data.options={n_train: 560, n_test: 40}", "auto.candidates=[minilm-l6, nobody/not-a-model]",
                  "auto.strategy=head", "auto.params={config_overrides: {num_hidden_layers: 1}, max_length: 64}",
                  "auto.max_rows=440"],  # LogME needs more rows than MiniLM's 384 dimensions
    "sweep.yaml": ["data.options={n_train: 160, n_test: 80}", "search.n_trials=4",
                   "search.params={epochs: 2, config_overrides: {num_hidden_layers: 1}}",
                   "search.space.lr={low: 1.0e-5, high: 1.0e-4, log: true}", "search.space.random_state=[0, 1]"],
    "ctr.yaml": ["data.limit=2000", "data.validation_limit=500", "data.test_limit=500",
                 "members[0].params={epochs: 1, batch_size: 256}",
                 "members[1].params={epochs: 1, batch_size: 256, config_overrides: {model: dcn-v2}}"],
}


def test_every_task_has_an_example_and_every_example_validates():
    from tunefuse.runs.config import load_config
    from tunefuse.tasks import TASKS

    configs = {p.name: load_config(p) for p in EXAMPLES.glob("*.yaml")}
    assert set(configs) == set(SHRINK)
    assert {c.task for c in configs.values()} == set(TASKS)


@pytest.mark.slow
@pytest.mark.parametrize("example", [n for n in SHRINK if n not in ("reviews.yaml", "auto.yaml", "sweep.yaml")])
# reviews: test_demo.py; auto: test_auto_preset_...; sweep: test_scale.py
def test_example_runs_at_tiny_scale(example, tmp_path):
    sets = SHRINK[example] + [f"output={tmp_path / 'run'}"]
    result = invoke("fit", EXAMPLES / example, "--quiet", *[x for s in sets for x in ("--set", s)])
    assert result.exit_code == 0, result.output + str(result.exception)
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert len(board) >= (1 if example == "detection.yaml" else 2) and board["val_score"].notna().all()
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000
    assert any((tmp_path / "run" / "predictions").glob("*.jsonl"))
    if example in ("images.yaml", "segmentation.yaml", "detection.yaml"):
        served_image_matches_predict(tmp_path / "run")


def served_image_matches_predict(run: Path) -> None:
    """`serve` of an image run: a test image sent as a base64 PNG gets the model's own prediction; a bad image a 422."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from tunefuse.runs.config import load_config
    from tunefuse.runs.evaluate import load_model
    from tunefuse.runs.folder import RunFolder
    from tunefuse.runs.inputs import load_data
    from tunefuse.serve import create_app

    folder = RunFolder(run)
    image = load_data(load_config(folder.config_file)).X_test[0]
    image = np.asarray(Image.open(image).convert("RGB")) if isinstance(image, (str, Path)) else np.asarray(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    body = {"inputs": [base64.b64encode(buf.getvalue()).decode()]}
    model = load_model(folder, folder.read_run()["chosen"])
    expected = model.predict([Image.open(io.BytesIO(buf.getvalue()))])[0]
    with TestClient(create_app(run)) as client:
        got = client.post("/predict", json=body).json()["predictions"][0]
        bad = client.post("/predict", json={"inputs": ["bm90IGFuIGltYWdl"]})  # base64 of "not an image"
        assert bad.status_code == 422 and "not an image file" in bad.json()["error"]
    if "mask_png" in got:  # segmentation: the PNG holds indices into "classes"
        index = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["mask_png"]))))
        np.testing.assert_array_equal(np.asarray(got["classes"])[index], expected)
    elif "detections" in got:
        assert len(got["detections"]) == len(expected["boxes"])
        for det, box in zip(got["detections"], expected["boxes"]):
            np.testing.assert_allclose(det["box"], box, atol=0.01)
    else:
        assert str(got["label"]) == str(expected)


def test_rank_scores_the_config_backbones_on_its_training_rows(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path / "run", data={
        "train": "reviews", "options": {"n_train": 560, "n_test": 20}}))
    result = invoke("rank", cfg, "--max-rows", "60")  # LogME needs more rows than MiniLM's 384 dimensions
    assert result.exit_code == 2 and "more rows than the features' rank" in result.stderr
    result = invoke("rank", cfg, "--max-rows", "440", "--out", tmp_path / "rank.csv")
    assert result.exit_code == 0, result.output
    assert "ranked 1 backbone(s) on 440 rows of text-classification" in result.stdout  # tfidf is not a backbone
    table = pd.read_csv(tmp_path / "rank.csv")
    assert list(table["candidate"]) == ["minilm-l6"] and np.isfinite(table["logme"]).all()
    assert table["probe_acc"].between(0, 1).all() and "apache-2.0" in table["licence"][0]
    result = invoke("rank", cfg, "--out", tmp_path / "rank.txt")
    assert result.exit_code == 2 and "must end in .csv" in result.stderr
    result = invoke("rank", EXAMPLES / "ner.yaml", "--set", "data.limit=40")
    assert result.exit_code == 2 and "one feature vector per example" in result.stderr
    assert not (tmp_path / "run").exists()  # ranking writes no run folder


# ------------------------------------------------------------------------------------------- export, serve

def test_export_writes_onnx_that_matches_torch_and_runs_alone(fitted_run, tmp_path):
    """`tunefuse export` of the soup: model.onnx + tokenizer.json + example.py; the example runs in a fresh process
    with onnxruntime and tokenizers, and its labels are the model's own."""
    from tunefuse.runs.evaluate import load_model
    from tunefuse.runs.folder import RunFolder

    run, _ = fitted_run
    out = tmp_path / "export"
    result = invoke("export", run, "--model", "greedy_soup", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"model.onnx", "tokenizer.json", "export.json", "example.py"}
    meta = json.loads((out / "export.json").read_text())
    assert meta["check"]["max_abs_diff"] <= 1e-4 and meta["labels"] == ["0", "1"]
    assert len((out / "example.py").read_text().splitlines()) <= 25
    texts = ["I love this dress, it fits perfectly", "poor quality, sent it back"]
    ran = subprocess.run([sys.executable, str(out / "example.py"), *texts], capture_output=True, text=True,
                         timeout=120, env={"PATH": os.environ.get("PATH", "")})
    assert ran.returncode == 0, ran.stderr
    got = [line.split("\t")[0] for line in ran.stdout.splitlines()]
    soup = load_model(RunFolder(run), "greedy_soup")
    assert got == [str(v) for v in soup.predict(pd.DataFrame({"text": texts}))]
    result = invoke("export", run, "--model", "stacking", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "export one of its members or a soup" in result.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    result = invoke("export", run, "--model", "greedy_soup", "--out", tmp_path / "mine")
    assert result.exit_code == 2 and "is not an earlier export" in result.stderr
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"


def test_export_int8_is_checked_on_validation_rows_and_refused_when_it_disagrees(fitted_run, tmp_path, monkeypatch):
    """`export --int8`: model.int8.onnx beside model.onnx, smaller, checked by label agreement and accuracy on the
    run's validation rows; example.py runs it; an int8 model that disagrees with fp32 is refused, nothing written."""
    import onnxruntime as ort

    import tunefuse.export as export_mod
    from tunefuse.runs.config import load_config
    from tunefuse.runs.evaluate import load_model
    from tunefuse.runs.folder import RunFolder
    from tunefuse.runs.inputs import load_data

    run, _ = fitted_run
    out = tmp_path / "int8"
    result = invoke("export", run, "--model", "ft-random_state=0", "--out", out, "--int8", "--min-agreement", "0.5")
    assert result.exit_code == 0, result.output
    assert "model.int8.onnx" in result.stdout and "validation rows" in result.stdout
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.int8.onnx", "tokenizer.json", "export.json",
                                               "example.py"}
    meta = json.loads((out / "export.json").read_text())
    q = meta["int8"]
    assert meta["model"] == "model.int8.onnx" and q["size_mb"] < q["fp32_size_mb"] / 2
    data = load_data(load_config(run / "config.yaml"))
    assert q["rows"] == len(data.y_val) and 0.5 <= q["label_agreement"] <= 1 and 0 <= q["int8_accuracy"] <= 1
    tok = export_mod.text_tokenizer(out / "tokenizer.json", meta)
    texts_val = [str(t) for t in data.X_val["text"]]
    for name, key in (("model.onnx", "fp32_accuracy"), ("model.int8.onnx", "int8_accuracy")):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        pred = np.asarray(meta["labels"])[export_mod.text_proba(sess, tok, meta, texts_val).argmax(1)]
        assert q[key] == pytest.approx(float((pred == np.asarray([str(v) for v in data.y_val])).mean()))
    member = load_model(RunFolder(run), "ft-random_state=0")  # and the fp32 export is the torch member
    agree = np.mean(np.asarray(member.predict(data.X_val)).astype(str) == np.asarray(meta["labels"])[
        export_mod.text_proba(ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]),
                              tok, meta, texts_val).argmax(1)])
    assert agree >= 0.9  # torch may predict in bf16 on CPUs that have it
    texts = ["I love this dress, it fits perfectly", "poor quality, sent it back", "ok"]
    ran = subprocess.run([sys.executable, str(out / "example.py"), *texts], capture_output=True, text=True,
                         timeout=120, env={"PATH": os.environ.get("PATH", "")})
    assert ran.returncode == 0, ran.stderr
    sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    expected = export_mod.text_proba(sess, tok, meta, texts).argmax(1)
    assert [line.split("\t")[0] for line in ran.stdout.splitlines()] == [meta["labels"][i] for i in expected]

    real = export_mod._session

    class Flipped:  # an int8 model that predicts the other label on every row
        def __init__(self, path):
            self.sess = real(path)

        def run(self, names, feeds):
            return [self.sess.run(names, feeds)[0][:, ::-1]]

    monkeypatch.setattr(export_mod, "_session",
                        lambda path: Flipped(path) if Path(path).name == "model.int8.onnx" else real(path))
    before = (out / "model.int8.onnx").read_bytes()
    result = invoke("export", run, "--model", "ft-random_state=0", "--out", out, "--int8")
    assert result.exit_code == 2, result.output
    assert "agrees with fp32 on 0.0%" in result.stderr and "without --int8" in result.stderr
    assert (out / "model.int8.onnx").read_bytes() == before  # the earlier export is intact


@pytest.fixture(scope="module")
def client(fitted_run):
    from fastapi.testclient import TestClient

    from tunefuse.serve import create_app

    run, _ = fitted_run
    with TestClient(create_app(run, "vote_soft", max_items=8, max_bytes=50_000)) as c:
        yield c


def test_serve_predicts_batches_and_describes_itself(client, fitted_run):
    import concurrent.futures

    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["model"] == "vote_soft" and meta["kind"] == "fusion of 3 members" and meta["labels"] == [0, 1]
    texts = ["great dress", "awful fit, returned it", "love it"]
    r = client.post("/predict", json={"inputs": texts})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and all(abs(sum(p["proba"].values()) - 1) < 1e-5 for p in preds)
    from tunefuse.runs.evaluate import load_model
    from tunefuse.runs.folder import RunFolder

    direct = load_model(RunFolder(fitted_run[0]), "vote_soft").predict_proba(pd.DataFrame({"text": texts}))
    np.testing.assert_allclose([p["proba"]["1"] for p in preds], direct[:, 1], atol=1e-6)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests share forward passes
        before = client.get("/health").json()
        outs = list(pool.map(lambda i: client.post("/predict", json={"inputs": [f"text number {i}"] * (1 + i % 3)}),
                             range(24)))
        after = client.get("/health").json()
    assert all(o.status_code == 200 for o in outs)
    assert after["inputs"] - before["inputs"] == sum(1 + i % 3 for i in range(24))
    assert after["batches"] - before["batches"] < 24, "no request was batched with another"


@pytest.mark.parametrize("body,status,expected", [
    ({}, 422, "inputs"),
    ({"inputs": []}, 422, "at least one input"),
    ({"inputs": "a text"}, 422, "inputs"),
    ({"inputs": [3]}, 422, "inputs[0] is not a text (int)"),
    ({"inputs": [""]}, 422, "inputs[0] is empty"),
    ({"inputs": ["ok"], "extra": 1}, 422, "extra"),
    ({"inputs": ["x"] * 9}, 413, "over the limit of 8"),
    ({"inputs": ["x" * 20_001]}, 413, "characters"),
    ({"inputs": ["x" * 30_000, "y" * 30_000]}, 413, "bytes"),
])
def test_serve_rejects_bad_requests_with_one_line(client, body, status, expected):
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    assert expected in r.json()["error"] and "\n" not in r.json()["error"]


def test_serve_rejects_non_json(client):
    r = client.post("/predict", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "error" in r.json()
    r = client.get("/nothing-here")
    assert r.status_code == 404 and "fix: POST /predict" in r.json()["error"]


def test_fuzzed_predict_bodies_get_200_or_a_4xx(client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bodies = st.one_of(st.none(), st.integers(), st.text(max_size=20),
                       st.dictionaries(st.sampled_from(["inputs", "x"]), st.one_of(
                           st.lists(st.one_of(st.text(max_size=30), st.integers(), st.none(),
                                              st.floats(allow_nan=False, allow_infinity=False)),
                                    max_size=10), st.text(max_size=5), st.integers()), max_size=2))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies)
    def check(body):
        r = client.post("/predict", json=body)
        assert r.status_code == 200 or 400 <= r.status_code < 500, (body, r.status_code, r.text)
        if r.status_code != 200:
            assert "error" in r.json()

    check()


def test_mlflow_logging_to_a_local_file_store(fitted_run, tmp_path, monkeypatch):
    """--mlflow logs the finished run: params, every model's scores, learning curves, the verdict, the files."""
    import mlflow

    from tunefuse.fusion.verdict import Verdict
    from tunefuse.runs.config import load_config
    from tunefuse.runs.folder import RunFolder
    from tunefuse.runs.tracking import check_mlflow, log_to_mlflow

    run, cfg_path = fitted_run
    uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(ValueError, match="MLFLOW_ALLOW_FILE_STORE"):  # MLflow 3 refuses file stores by default
        check_mlflow(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_mlflow(uri)
    chosen = json.loads((run / "run.json").read_text())["chosen"]
    board = pd.read_csv(run / "leaderboard.csv", keep_default_na=False, na_values=[""])
    run_id = log_to_mlflow(RunFolder(run), load_config(cfg_path), board, Verdict(chosen, "member", chosen), uri,
                           "tests")
    mlflow.set_tracking_uri(uri)
    logged = mlflow.get_run(run_id)
    assert logged.data.params["members.0.backbone"] == "minilm-l6"
    assert logged.data.params["seed"] == "0"
    assert "stacking.test_score" in logged.data.metrics and "ft-random_state_0.val_score" in logged.data.metrics
    assert logged.data.tags["tunefuse.chosen"] == chosen
    curve = mlflow.MlflowClient(uri).get_metric_history(run_id, "ft-random_state_0.full.train_loss")
    assert [m.step for m in curve] == [1, 2]
    files = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id)}
    assert {"config.yaml", "leaderboard.csv", "report.html", "verdict.txt"} <= files


# ------------------------------------------------------------------------------------------- the auto preset

def test_auto_preset_ranks_chooses_within_budget_fuses_explains_and_resumes(tmp_path):
    """`auto:` ranks the candidates on the training rows, fine-tunes the best that fit the budget beside the listed
    members, fuses them with the default fusions, says why in auto.json and the report, and a rerun reuses it all."""
    cfg = EXAMPLES / "auto.yaml"
    sets = [x for s in SHRINK["auto.yaml"] + [f"output={tmp_path / 'run'}"] for x in ("--set", s)]
    result = invoke("fit", cfg, *sets)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "run" / "auto.json").read_text())
    rows = {r["candidate"]: r for r in doc["rows"]}
    assert rows["minilm-l6"]["chosen"] and rows["minilm-l6"]["member"] == "auto-minilm-l6"
    assert "logme" in rows["minilm-l6"]["reason"] and rows["minilm-l6"]["estimated_fit_s"] > 0
    assert rows["minilm-l6"]["fit_s"] > 0  # measured beside the estimate
    assert not rows["nobody/not-a-model"]["chosen"] and "not ranked" in rows["nobody/not-a-model"]["reason"]
    ranking = pd.read_csv(tmp_path / "run" / "ranking.csv")
    assert set(ranking["candidate"]) == {"minilm-l6", "nobody/not-a-model"} and ranking["error"].notna().sum() == 1
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert {"tfidf", "auto-minilm-l6", "stacking", "ensemble_selection", "vote_soft"} <= set(board.iloc[:, 0])
    assert "Backbone choice (auto)" in (tmp_path / "run" / "report.html").read_text()
    assert "chosen (logme" in result.stdout and "not chosen (not ranked" in result.stdout
    # not given: the defaults, also for `tunefuse report` reading config.yaml back; `fusions: []` turns them off
    assert "fusions" not in yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "the auto preset's default" in invoke("fit", cfg, *sets, "--dry-run").stdout
    assert "the auto preset's default" not in invoke("fit", cfg, *sets, "--set", "fusions=[]", "--dry-run").stdout
    again = invoke("fit", cfg, *sets)
    assert again.exit_code == 0, again.output
    assert "auto: backbones chosen already (auto-minilm-l6)" in again.stdout
    assert "member auto-minilm-l6: fitted already" in again.stdout
    poor = invoke("fit", cfg, *sets, "--set", "auto.budget_s=0.0001", "--set", f"output={tmp_path / 'poor'}")
    assert poor.exit_code == 2 and "no candidate fits budget_s=0" in poor.stderr
    assert "raise auto.budget_s" in poor.stderr
    assert len(poor.stderr.strip().splitlines()) == 1
    ner = invoke("validate", EXAMPLES / "ner.yaml", "--set", "auto.top_k=1")
    assert ner.exit_code == 2 and "auto: ranking backbones needs one feature vector per example" in ner.stderr
    bad = invoke("validate", cfg, "--set", "auto.params.epoch=2")
    assert bad.exit_code == 2 and "auto.params: unknown parameter 'epoch'" in bad.stderr
