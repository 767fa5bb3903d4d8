"""Bad input: one clear error naming the parameter, the value, the valid choices and the fix."""
import numpy as np
import pandas as pd
import pytest

from tunefuse import Backbone, Finetuner, list_backbones, register_backbone
from tunefuse.backbones import resolve_backbone

from .conftest import TINY

X2 = ["good", "bad", "fine", "awful"]
Y2 = [1, 0, 1, 0]


@pytest.mark.parametrize("X, y, exc, match", [
    ([], [], ValueError, r"X is empty \(0 rows\)"),
    (X2, [1, 0, 1], ValueError, "X has 4 rows but y has 3"),
    (X2, [1, 1, 1, 1], ValueError, r"single class \[1\]"),
    (X2, [1, 0, np.nan, 0], ValueError, r"missing label\(s\) \(None/NaN\) at rows \[2\]"),
    ([1, 2, 3, 4], Y2, TypeError, r"X\[0\] is int 1, not str.*dropna"),
    (["ok", None, "x", "y"], Y2, TypeError, r"X\[1\] is NoneType None"),
    (pd.DataFrame({"a": X2, "b": X2}), Y2, ValueError, r"X has 2 columns \['a', 'b'\].*one text column"),
    (np.array([X2, X2]).T, Y2, ValueError, r"shape \(4, 2\).*1-column"),
    ("just one text", Y2, TypeError, "single str"),
])
def test_bad_data(X, y, exc, match):
    with pytest.raises(exc, match=match):
        Finetuner(**TINY).fit(X, y)


@pytest.mark.parametrize("params, match", [
    (dict(strategy="magic"), r"strategy='magic' is not one of \['full', 'head', 'lora', 'lp-ft'\]"),
    (dict(backbone="no-such-model"), r"backbone='no-such-model' is not a registered name.*minilm-l6"),
    (dict(lr=-1.0), r"lr=-1.0 is invalid; fix: pass a float > 0 or None"),
    (dict(epochs=0), r"epochs=0 is invalid; fix: pass an int >= 1"),
    (dict(layer_decay=1.5), r"layer_decay=1.5 is invalid.*\(0, 1\]"),
    (dict(label_smoothing=1.0), r"label_smoothing=1.0 is invalid"),
    (dict(validation_fraction=0.0), r"validation_fraction=0.0 is invalid"),
    (dict(dropout=1.0), r"dropout=1.0 is invalid; fix: pass a float in \[0, 1\) or None"),
    (dict(pooling="max"), r"pooling='max' is invalid; fix: pass one of \['auto', 'mean', 'native'\]"),
    (dict(precision="fp8"), r"precision='fp8' is not one of \('auto', 'bf16', 'fp32'\)"),
    (dict(probe_standardize="yes"), r"probe_standardize='yes' is invalid; fix: pass True or False"),
    (dict(early_stopping="sometimes"), r"early_stopping='sometimes' is invalid; fix: pass True, False or 'auto'"),
    (dict(template="Review:"), r"template='Review:' is invalid; fix: pass None or a str with exactly one '\{text\}'"),
    (dict(template="{text} {label}"), r"template='\{text\} \{label\}' is invalid"),
    (dict(template="{text} {text}"), r"template='\{text\} \{text\}' is invalid"),
])
def test_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        Finetuner(**{**TINY, **params}).fit(X2, Y2)


@pytest.mark.parametrize("weights, match", [([1, 1], r"shape \(2,\)"), ([0, 0, 0, 0], "positive sum"),
                                            ([1, -1, 1, 1], "non-negative")])
def test_bad_sample_weight(weights, match):
    with pytest.raises(ValueError, match=f"sample_weight.*{match}" if match != r"shape \(2,\)" else match):
        Finetuner(**TINY).fit(X2, Y2, sample_weight=weights)


@pytest.fixture(scope="module")
def fitted():
    return Finetuner(strategy="head", **TINY).fit(X2, Y2)


def test_score_rejects_unseen_and_nan_labels(fitted):
    with pytest.raises(ValueError, match=r"y has labels \[7\] unseen during fit; known labels are \[0, 1\]"):
        fitted.score(X2, [1, 0, 7, 0])
    with pytest.raises(ValueError, match="missing label"):
        fitted.score(X2, [1.0, 0.0, np.nan, 0.0])


def test_unfitted_predict_says_fit_first():
    with pytest.raises(Exception, match="not fitted"):
        Finetuner(**TINY).predict(X2)


def test_backbone_registry():
    assert "minilm-l6" in list_backbones()
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(Backbone(name="minilm-l6", locate=lambda: "x"))
    assert resolve_backbone("hf:bert-base-uncased")[0] == "bert-base-uncased"
    assert resolve_backbone("org/model")[0] == "org/model"


def test_backbone_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="folder without config.json"):
        resolve_backbone(str(tmp_path))
