import json

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

import tunefuse.finetuner as ftm
from tunefuse import Finetuner

from .conftest import TINY


@pytest.fixture(scope="module")
def fitted(reviews):
    X, y, _, _ = reviews
    return Finetuner(epochs=1, **TINY).fit(X, np.where(y == 1, "pos", "neg"))


def test_round_trip_gives_identical_predictions(fitted, reviews, tmp_path):
    Xt = reviews[2]
    path = fitted.save(tmp_path / "ckpt")
    assert {"model.safetensors", "config.json", "tunefuse.json", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))  # no pickles
    loaded = Finetuner.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(Xt), fitted.predict_proba(Xt))
    assert list(loaded.classes_) == ["neg", "pos"] and loaded.get_params() == fitted.get_params()


def test_transformers_opens_the_checkpoint(fitted, tmp_path):
    fitted.save(tmp_path / "ckpt")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.tunefuse_pooling == fitted.pooling_ == "mean"  # says what the head reads


def test_checkpoint_from_before_pooling_loads_with_native_pooling(fitted, tmp_path):
    path = fitted.save(tmp_path / "old")
    meta = json.loads((path / "tunefuse.json").read_text())
    del meta["pooling"]
    meta["params"].update(head_lr=1e-3, probe_epochs=20)  # parameters of that version, since retired
    (path / "tunefuse.json").write_text(json.dumps(meta))
    old = Finetuner.load(path)
    assert old.pooling_ == old.pooling == "native" and "head_lr" not in old.get_params()


def test_save_is_atomic(fitted, tmp_path, monkeypatch):
    target = fitted.save(tmp_path / "ckpt")
    before = sorted(p.name for p in target.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fitted.tokenizer_, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        fitted.save(target)
    assert sorted(p.name for p in target.iterdir()) == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind


def test_load_errors_name_the_problem(fitted, tmp_path):
    with pytest.raises(ValueError, match="tunefuse.json is missing"):
        Finetuner.load(tmp_path)
    path = fitted.save(tmp_path / "ckpt")
    meta = json.loads((path / "tunefuse.json").read_text())
    (path / "tunefuse.json").write_text(json.dumps(dict(meta, labels=["a", "b", "c"])))
    with pytest.raises(ValueError, match="head has 2 outputs but tunefuse.json lists 3 labels"):
        Finetuner.load(path)
    (path / "tunefuse.json").write_text(json.dumps(dict(meta, format="other/9")))
    with pytest.raises(ValueError, match=r"expected one of \['tunefuse.finetuner/1', 'tunefuse.finetuner/2'\]"):
        Finetuner.load(path)
    (path / "tunefuse.json").write_text(json.dumps(meta))
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        Finetuner.load(path)


def test_format_constant_is_what_is_written(fitted, tmp_path):
    path = fitted.save(tmp_path / "ckpt")
    assert json.loads((path / "tunefuse.json").read_text())["format"] == ftm.FORMAT


def test_checkpoint_of_the_previous_release_loads_as_text_classification(fitted, reviews, tmp_path):
    """tunefuse.finetuner/1 (before tasks): 'classes' instead of 'labels', no task, no source."""
    path = fitted.save(tmp_path / "ckpt")
    meta = json.loads((path / "tunefuse.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("task", "labels", "labels_dtype", "source")}
    old.update(format="tunefuse.finetuner/1", classes=meta["labels"], classes_dtype=meta["labels_dtype"],
               params={k: v for k, v in meta["params"].items() if k != "task"})
    (path / "tunefuse.json").write_text(json.dumps(old))
    loaded = Finetuner.load(path)
    assert loaded.task_.name == "text-classification" and list(loaded.classes_) == ["neg", "pos"]
    np.testing.assert_array_equal(loaded.predict_proba(reviews[2]), fitted.predict_proba(reviews[2]))
