"""The inference path changes how, not what, is computed: the aligned SDPA equals eager attention; the bf16 copy
follows every change of the trained weights and never travels with a copy or a pickle of its estimator."""
import contextlib
import copy
import pickle

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

import tunefuse.inference as inference
from tunefuse import Finetuner
from tunefuse.inference import InferenceModel, fast_attention
from tunefuse.train import make_optimizer

from .conftest import TINY

CFG = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")


def _batch(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (len(lengths), max(lengths)), generator=gen)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForQuestionAnswering])
@pytest.mark.parametrize("lengths", [[5, 9, 3, 9, 1, 7], [7, 7, 7], [16, 16], [17, 2]])  # padded; none; aligned
@pytest.mark.parametrize("attention", ["tunefuse_sdpa_aligned", "sdpa"])
def test_inference_attention_equals_eager(cls, lengths, attention, monkeypatch):
    monkeypatch.setattr(inference, "ATTENTION", attention)
    torch.manual_seed(0)
    model = cls(BertConfig(**CFG, num_labels=2)).double().eval()
    batch = _batch(lengths)
    real = batch["attention_mask"].bool()
    outs = {}
    with torch.inference_mode():
        for fast in (False, True):
            with fast_attention(model) if fast else contextlib.nullcontext():
                assert model.config._attn_implementation == (attention if fast else "eager")
                out = model(**batch)
            logits = out.logits if cls is BertForSequenceClassification else torch.stack(
                [out.start_logits, out.end_logits], -1)[real]  # padding positions are not outputs
            outs[fast] = logits
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-10, atol=1e-12)
    assert model.config._attn_implementation == "eager"  # restored on exit


def test_inference_copy_follows_every_weight_change():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**CFG, num_labels=2)).eval()
    holder = InferenceModel()
    first = holder.get(model, "bf16")
    assert first is not model and next(first.parameters()).dtype == torch.bfloat16
    assert holder.get(model, "bf16") is first  # unchanged weights: the same copy
    assert next(model.parameters()).dtype == torch.float32  # the trained weights stay fp32

    def changed(edit) -> bool:
        before = holder.get(model, "bf16")
        edit()
        after = holder.get(model, "bf16")
        return after is not before and torch.equal(after.classifier.weight, model.classifier.weight.bfloat16())

    with torch.no_grad():
        assert changed(lambda: model.classifier.weight.add_(1.0))  # an in-place write
    state = {k: v + 0.5 for k, v in model.state_dict().items()}
    assert changed(lambda: model.load_state_dict(state))  # a soup or a merge loaded in
    for opt in (torch.optim.AdamW(model.parameters(), lr=0.1), make_optimizer([{"params": model.parameters()}])):
        model(**_batch([3, 4])).logits.sum().backward()
        assert changed(opt.step)  # a training step: torch's foreach AdamW, tunefuse's fused one
    assert changed(lambda: setattr(model, "classifier", torch.nn.Linear(32, 2)))  # a new head module
    assert holder.get(model, "fp32") is model  # fp32 precision predicts from the trained model itself


def test_inference_copy_is_not_copied_or_pickled_with_its_estimator():
    holder = InferenceModel()
    holder.get(BertForSequenceClassification(BertConfig(**CFG, num_labels=2)), "bf16")
    assert holder.model is not None
    assert copy.deepcopy(holder).model is None
    assert pickle.loads(pickle.dumps(holder)).model is None


def test_bf16_predictions_agree_with_an_fp32_forward(reviews):
    X, y, Xt, _ = reviews
    clf = Finetuner(**TINY, epochs=1, batch_size=16, precision="bf16", random_state=0).fit(X[:64], y[:64])
    proba = clf.predict_proba(Xt[:64])
    assert clf.precision_ == "bf16" and clf._inference.model is not clf.model_
    ref = copy.deepcopy(clf)
    ref.precision_ = "fp32"  # fp32 weights, eager attention, no autocast: the exact forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "ATTENTION", None)
        exact = ref.predict_proba(Xt[:64])
    assert np.abs(proba - exact).max() < 0.02
    assert (proba.argmax(1) == exact.argmax(1)).mean() >= 0.95
    soup = clf.with_weights({k: v * 0.9 for k, v in clf.model_.state_dict().items()})
    assert not np.allclose(soup.predict_proba(Xt[:64]), proba)  # the soup predicts from its own weights
    np.testing.assert_array_equal(clf.predict_proba(Xt[:64]), proba)  # and the original is untouched


@pytest.mark.parametrize("mask", ["bool", "float", "key-only", None])
def test_aligned_sdpa_equals_sdpa_for_every_mask_form(mask):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 21, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    keep = torch.arange(21)[None] < torch.tensor([21, 13, 5])[:, None]  # (batch, keys)
    m = {"bool": keep[:, None, None, :].expand(3, 1, 21, 21),
         "float": torch.zeros(3, 1, 21, 21, dtype=torch.float64).masked_fill(~keep[:, None, None, :], float("-inf")),
         "key-only": keep[:, None, None, :], None: None}[mask]
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = inference.aligned_sdpa(module, q, k, v, m, scaling=0.3)
    ref, _ = inference.sdpa_attention_forward(module, q, k, v, m, scaling=0.3)
    assert out.shape == ref.shape == (3, 21, 4, 8)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
