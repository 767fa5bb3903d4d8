"""The speed paths change how, not what, is computed: packed forwards equal padded ones; the row-sparse AdamW equals
torch's AdamW on the rows it touches and leaves the others alone; a fit with them matches one without."""
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

import tunefuse.finetuner as ftm
from tunefuse import Finetuner
from tunefuse.packing import GROUP_OVERHEAD, packable_encoder, packed
from tunefuse.train import AdamW, clip_grad_norm

from .conftest import TINY

CFG = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")


def _batch(lengths, vocab=120, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=gen)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    types = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids) * mask  # sentence pairs, as in QA
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering])
@pytest.mark.parametrize("overhead", [GROUP_OVERHEAD, 1])  # one attention group; one group per sequence
@pytest.mark.parametrize("lengths", [[5, 9, 3, 9, 1, 7], [1, 3, 5, 7, 9, 9]])  # shuffled; already in group order
def test_packed_forward_and_backward_equal_padded(cls, overhead, lengths, monkeypatch):
    monkeypatch.setattr("tunefuse.packing.GROUP_OVERHEAD", overhead)
    torch.manual_seed(0)
    model = cls(BertConfig(**CFG, num_labels=2 if cls is BertForQuestionAnswering else 3)).double()
    batch = _batch(lengths)
    real = batch["attention_mask"].bool()
    outs, grads = {}, {}
    for on in (False, True):
        model.zero_grad()
        with packed(model, on) as active:
            out = model(**batch)
        assert active is on
        logits = out.logits if cls is not BertForQuestionAnswering else torch.stack([out.start_logits,
                                                                                     out.end_logits], -1)
        logits = logits[real] if logits.dim() == 3 else logits  # padding positions are not outputs
        logits.pow(2).sum().backward()
        outs[on] = logits.detach()
        grads[on] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-9, atol=1e-12)
    assert model.config._attn_implementation == "eager"  # restored on exit


def test_packing_skips_models_it_does_not_know():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 3))
    assert packable_encoder(lin) is None
    with packed(lin) as active:
        assert active is False


def test_sparse_rows_step_equals_adamw_on_touched_rows_and_leaves_the_rest():
    start = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    dense_w = torch.nn.Parameter(start.clone())
    sparse_w = torch.nn.Parameter(dense_w.detach().clone())
    ref = torch.optim.AdamW([dense_w], lr=0.1, weight_decay=0.01)
    opt = AdamW([sparse_w], lr=0.1, weight_decay=0.01, fused=True)
    rows = torch.tensor([1, 3, 3, 7])  # row 3 twice: its gradients add
    for _ in range(3):
        for w, o, sparse in ((dense_w, ref, False), (sparse_w, opt, True)):
            o.zero_grad()
            torch.nn.functional.embedding(rows, w, sparse=sparse).pow(2).sum().backward()
            o.step()
    touched, untouched = [1, 3, 7], [0, 2, 4, 5, 6, 8, 9]
    torch.testing.assert_close(sparse_w[touched], dense_w[touched])  # every step touches them: lazy == dense
    torch.testing.assert_close(sparse_w[untouched].detach(), start[untouched])  # no decay, no step while unseen
    assert opt.state[sparse_w]["step"].item() == 3 and set(opt.state[sparse_w]) == {"step", "exp_avg", "exp_avg_sq"}


def test_clip_grad_norm_counts_sparse_gradients():
    a = torch.nn.Parameter(torch.zeros(5, 2))
    b = torch.nn.Parameter(torch.zeros(3))
    torch.nn.functional.embedding(torch.tensor([0, 2]), a, sparse=True).sum().mul(3.0).backward()
    b.grad = torch.full((3,), 4.0)
    total = clip_grad_norm([a, b], 1.0)
    assert total.item() == pytest.approx(np.sqrt(4 * 9 + 3 * 16))
    assert a.grad.is_sparse and b.grad.norm().item() ** 2 + a.grad.coalesce().values().norm().item() ** 2 \
        == pytest.approx(1.0, rel=1e-5)


@pytest.mark.slow
def test_fit_with_speed_paths_predicts_as_without(reviews, monkeypatch):
    """Packing and row-sparse embedding steps on a real MiniLM cut: the same predictions as the padded, dense fit."""
    X, y, Xt, _ = reviews
    params = dict(TINY, epochs=1, batch_size=16, lr=1e-4, precision="fp32", random_state=0)
    fast = Finetuner(**params).fit(X, y)
    monkeypatch.setattr(ftm, "SPARSE_EMBEDDING_GRADS", False)
    slow = Finetuner(**params, packing=False).fit(X, y)
    assert not fast.model_.get_input_embeddings().sparse  # switched back after the fit
    np.testing.assert_allclose(fast.predict_proba(Xt), slow.predict_proba(Xt), atol=2e-3)
    assert (fast.predict(Xt) == slow.predict(Xt)).mean() >= 0.98
