import numpy as np
import torch

from tunefuse.data import collate, epoch_order, predict_batches, split_by_length
from tunefuse.loading import load_pretrained

from .conftest import TINY


def test_split_by_length_covers_each_row_once():
    lengths = np.array([5, 120, 7, 64, 6, 118, 60, 8])
    for overhead in (0, 32, 256, 10**9):
        chunks = split_by_length(lengths, overhead)
        assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))
    assert len(split_by_length(lengths, 10**9)) == 1
    assert len(split_by_length(lengths, 0)) == len(set(lengths.tolist()))


def test_predict_batches_respect_the_token_budget():
    lengths = np.random.default_rng(0).integers(3, 128, 500)
    batches = predict_batches(lengths, 1024)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(b) * lengths[b].max() <= 1024 or len(b) == 1 for b in batches)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert np.array_equal(epoch_order(50, 1, 2), epoch_order(50, 1, 2))
    assert not np.array_equal(epoch_order(50, 1, 2), epoch_order(50, 1, 3))


def test_micro_batches_give_the_full_batch_gradient(reviews):
    """Splitting a batch by length changes the compute, not the gradient (up to float rounding)."""
    model, tok, max_len, _ = load_pretrained("minilm-l6", "AutoModelForSequenceClassification", num_labels=2,
                                             config_overrides=TINY["config_overrides"], device=torch.device("cpu"))
    model.eval()  # no dropout: both paths must see the same function
    ids = tok(reviews[0]["text"].tolist()[:8], truncation=True, max_length=max_len)["input_ids"]
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])

    def grads(chunks):
        model.zero_grad()
        for rows in chunks:
            logits = model(**collate([ids[i] for i in rows], tok.pad_token_id)).logits
            (torch.nn.functional.cross_entropy(logits, y[rows], reduction="sum") / 8).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    full = grads([np.arange(8)])
    split = grads(split_by_length(np.array([len(x) for x in ids]), 0))
    torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-6)
