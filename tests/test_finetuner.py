import json

import numpy as np
import pytest
import torch
from sklearn.base import clone

from tunefuse import STRATEGIES, Finetuner
from tunefuse.probe import PROBE_L2_GRID, PROBE_L2_GRID_STANDARDIZED
from tunefuse.train import param_groups

from .conftest import TINY


@pytest.fixture(scope="module")
def fitted(reviews):
    X, y, _, _ = reviews
    return {s: Finetuner(strategy=s, epochs=1, **TINY).fit(X, y) for s in sorted(STRATEGIES)}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_fits_and_predicts(fitted, reviews, strategy):
    _, _, Xt, yt = reviews
    clf = fitted[strategy]
    proba = clf.predict_proba(Xt)
    assert proba.shape == (len(Xt), 2)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.history_ and all(np.isfinite(h["train_loss"]) for h in clf.history_)
    assert clf.fit_time_ > 0
    pred = clf.predict(Xt)
    assert set(pred) <= set(clf.classes_) and clf.score(Xt, yt) == np.mean(pred == yt)
    if strategy in ("head", "lp-ft"):  # the probe alone beats the majority class; 1 epoch of full FT may not
        assert clf.score(Xt, yt) > max(yt.mean(), 1 - yt.mean())


def _backbone_distance(clf, reference):
    ref = dict(reference.named_parameters())
    return sum(float((p.detach() - ref[n].detach()).norm()) for n, p in clf.model_.named_parameters()
               if n in ref and not n.startswith("classifier"))


@pytest.fixture(scope="module")
def pretrained():
    return Finetuner(strategy="head", epochs=1, **TINY).pretrained_model()


def test_head_only_leaves_backbone_untouched_and_full_moves_it(fitted, pretrained):
    assert _backbone_distance(fitted["head"], pretrained) == 0
    assert _backbone_distance(fitted["full"], pretrained) > 0
    assert _backbone_distance(fitted["lora"], pretrained) > 0  # merged adapters changed the attention weights
    assert type(fitted["lora"].model_).__name__ == "BertForSequenceClassification"  # merged, no peft wrapper


def test_lp_ft_runs_probe_then_full(fitted):
    assert [h["stage"] for h in fitted["lp-ft"].history_][0] == "probe"
    assert fitted["lp-ft"].history_[-1]["stage"] == "full"


def test_l2sp_pulls_backbone_towards_pretrained(reviews, pretrained):
    X, y, _, _ = reviews
    free = Finetuner(epochs=1, lr=5e-4, **TINY).fit(X, y)
    anchored = Finetuner(epochs=1, lr=5e-4, l2sp=50.0, **TINY).fit(X, y)
    assert _backbone_distance(anchored, pretrained) < 0.7 * _backbone_distance(free, pretrained)


def test_layer_decay_and_weight_decay_groups(pretrained):
    groups = param_groups(pretrained, lr=1e-3, weight_decay=0.1, layer_decay=0.5, head_names=("classifier",))
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    wds = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(pretrained.named_parameters())
    # one layer (index 0): layer lr = lr * 0.5**1, embeddings one step lower, head at the full lr
    assert lrs[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(5e-4)
    assert lrs[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(2.5e-4)
    assert lrs[id(named["classifier.weight"])] == pytest.approx(1e-3)
    assert wds[id(named["bert.encoder.layer.0.attention.self.query.bias"])] == 0.0
    assert wds[id(named["bert.embeddings.LayerNorm.weight"])] == 0.0
    assert wds[id(named["classifier.weight"])] == 0.1


def test_label_smoothing_makes_predictions_less_confident(reviews):
    X, y, Xt, _ = reviews
    sharp = Finetuner(strategy="head", probe_l2=1e-4, **TINY).fit(X, y)
    smooth = Finetuner(strategy="head", probe_l2=1e-4, label_smoothing=0.4, **TINY).fit(X, y)
    assert smooth.predict_proba(Xt).max(1).mean() < sharp.predict_proba(Xt).max(1).mean()


@pytest.mark.slow
def test_early_stopping_restores_best_epoch(reviews):
    X, y, Xt, yt = reviews
    clf = Finetuner(epochs=6, lr=3e-4, patience=2, **TINY).fit(X, y, X_val=Xt, y_val=yt)
    scores = [h["val_score"] for h in clf.history_]
    assert len(scores) <= 6
    assert clf.score(Xt, yt) == pytest.approx(max(scores))


def test_probe_picks_its_l2_on_validation_and_beats_the_majority(reviews):
    X, y, Xt, yt = reviews
    clf = Finetuner(strategy="head", **TINY).fit(X, y, X_val=Xt, y_val=yt)
    probes = [h for h in clf.history_ if h["stage"] == "probe"]
    assert [h["l2"] for h in probes] == list(PROBE_L2_GRID)
    assert clf.probe_l2_ == min(probes, key=lambda h: h["val_loss"])["l2"]
    assert clf.score(Xt, yt) > max(yt.mean(), 1 - yt.mean())  # the probe learns more than the majority class


def test_standardized_probe_is_scikit_learns_logistic_regression_on_standardized_features(reviews):
    from sklearn.linear_model import LogisticRegression

    X, y, Xt, yt = reviews
    l2 = 0.05
    clf = Finetuner(strategy="head", probe_standardize=True, probe_l2=l2, **TINY).fit(X, y, X_val=Xt, y_val=yt)
    x, xt = clf.features(X), clf.features(Xt)
    mu, sd = x.mean(0), x.std(0, ddof=1)
    # the head's two softmax rows split the binary weight vector: l2/2·||W||² = l2/4·||v||², i.e. C = 2 / (n·l2)
    ref = LogisticRegression(C=2 / (len(x) * l2), tol=1e-8, max_iter=5000).fit((x - mu) / sd, y)
    np.testing.assert_allclose(clf.predict_proba(Xt), ref.predict_proba((xt - mu) / sd), atol=2e-3)
    # the fitted head reads raw features: standardisation is folded into its weights, so it saves as before
    assert clf.model_.classifier.in_features == x.shape[1]


def test_standardized_probe_picks_its_l2_from_its_own_grid(reviews):
    X, y, Xt, yt = reviews
    clf = Finetuner(strategy="head", probe_standardize=True, **TINY).fit(X, y, X_val=Xt, y_val=yt)
    assert [h["l2"] for h in clf.history_ if h["stage"] == "probe"] == list(PROBE_L2_GRID_STANDARDIZED)
    assert clf.score(Xt, yt) > max(yt.mean(), 1 - yt.mean())


def test_validation_split_is_carved_when_none_given(reviews):
    X, y, _, _ = reviews
    clf = Finetuner(strategy="head", early_stopping=True, validation_fraction=0.25, **TINY).fit(X, y)
    assert all("val_score" in h for h in clf.history_)
    no_val = Finetuner(strategy="head", early_stopping=False, **TINY).fit(X, y)
    assert all("val_score" not in h for h in no_val.history_)


def test_sample_weight_weighs_the_loss(reviews):
    X, y, Xt, _ = reviews
    only_negatives = np.where(y == 0, 1.0, 0.0)
    clf = Finetuner(strategy="head", **TINY).fit(X, y, sample_weight=only_negatives)
    assert (clf.predict(Xt) == 0).mean() > 0.9


def test_same_seed_same_predictions_and_other_seed_differs(reviews):
    X, y, Xt, _ = reviews
    a = Finetuner(epochs=1, random_state=3, **TINY).fit(X, y).predict_proba(Xt)
    b = Finetuner(epochs=1, random_state=3, **TINY).fit(X, y).predict_proba(Xt)
    c = Finetuner(epochs=1, random_state=4, **TINY).fit(X, y).predict_proba(Xt)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_does_not_touch_the_global_rng(reviews):
    X, y, _, _ = reviews
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Finetuner(strategy="head", **TINY).fit(X, y)
    assert torch.equal(torch.rand(3), expected)


def test_string_labels_and_clone(reviews):
    X, y, Xt, _ = reviews
    labels = np.where(y == 1, "pos", "neg")
    clf = Finetuner(strategy="head", **TINY)
    fitted = clone(clf).fit(X, labels)
    assert list(fitted.classes_) == ["neg", "pos"]
    assert set(fitted.predict(Xt)) <= {"neg", "pos"}
    assert clone(fitted).get_params() == clf.get_params() and not hasattr(clone(fitted), "model_")


def test_pooling_auto_follows_the_sentence_transformers_config(fitted, reviews):
    _, _, Xt, _ = reviews
    # all-MiniLM-L6-v2 declares mean pooling (1_Pooling/config.json), so every strategy's head reads the mean
    assert {clf.pooling_ for clf in fitted.values()} == {"mean"}
    head = fitted["head"]
    feats = head.features(list(Xt["text"][:4]))
    enc = head.tokenizer_(list(Xt["text"][:4]), padding=True, truncation=True, max_length=head.max_length_,
                          return_tensors="pt")
    with torch.inference_mode():
        hidden = head.model_.bert(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    np.testing.assert_allclose(feats, ((hidden * mask).sum(1) / mask.sum(1)).numpy(), atol=2e-2)


def test_native_pooling_feeds_bert_pooler(reviews):
    X, y, Xt, _ = reviews
    native = Finetuner(strategy="head", pooling="native", **TINY).fit(X, y)
    assert native.pooling_ == "native"
    texts = list(Xt["text"][:4])
    enc = native.tokenizer_(texts, padding=True, truncation=True, max_length=native.max_length_, return_tensors="pt")
    with torch.inference_mode():
        pooled = native.model_.bert(**enc).pooler_output
    np.testing.assert_allclose(native.features(texts), pooled.numpy(), atol=2e-2)


def test_template_wraps_every_text_and_keys_the_feature_cache(fitted, reviews):
    X, y, Xt, _ = reviews
    prompted = Finetuner(strategy="head", template='Review: "{text}" Liked?', **TINY).fit(X, y)
    texts = list(Xt["text"][:4])
    enc = prompted.tokenizer_([f'Review: "{t}" Liked?' for t in texts], padding=True, truncation=True,
                              max_length=prompted.max_length_, return_tensors="pt")
    with torch.inference_mode():
        hidden = prompted.model_.bert(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    # the cached features of the prompted member are the prompted texts' features, not the raw texts' ones that
    # the unprompted head-only member put in the same cache
    np.testing.assert_allclose(prompted.features(texts), expected, atol=2e-2)
    assert not np.allclose(fitted["head"].features(texts), expected, atol=2e-2)
    assert clone(prompted).get_params()["template"] == 'Review: "{text}" Liked?'


@pytest.mark.slow
def test_gguf_decoder_backbone_fits_saves_and_reloads(reviews, tmp_path):
    """SmolLM2-135M from its package's GGUF file (dequantised on load), cut to 2 layers: a head-only member with
    mean pooling over a prompted text and a standardised probe (Llama's head has no bias: scaled only, as the bench's
    member), saved as ordinary safetensors and reloaded to the same predictions."""
    X, y, Xt, _ = reviews
    clf = Finetuner("smollm2-135m", "head", pooling="mean", template="Review: {text}", probe_standardize=True,
                    config_overrides={"num_hidden_layers": 2}, verbose=0).fit(X[:32], y[:32])
    assert type(clf.model_).__name__ == "LlamaForSequenceClassification" and clf.pooling_ == "mean"
    assert clf.model_.score.bias is None
    proba = clf.predict_proba(Xt[:8])
    clf.save(tmp_path / "smol")
    again = Finetuner.load(tmp_path / "smol")
    np.testing.assert_allclose(again.predict_proba(Xt[:8]), proba, atol=1e-5)


def test_a_decoders_head_only_probe_reads_the_last_real_token(reviews):
    """SmolLM2 (Llama) with its own pooling: the sequence-classification head scores every token and keeps the last
    non-padding one, so the probe is fitted on that token's hidden state; transformers' own forward over a padded
    batch of texts of different lengths then gives the probabilities tunefuse predicts."""
    X, y, Xt, _ = reviews
    clf = Finetuner("smollm2-135m", "head", config_overrides={"num_hidden_layers": 1}, verbose=0,
                    early_stopping=False).fit(X[:48], y[:48])
    assert clf.pooling_ == "native"
    texts = Xt["text"].iloc[:6].tolist()
    assert len({len(t) for t in texts}) > 1  # padding differs row to row
    assert clf.features(Xt[:6]).shape == (6, clf.model_.config.hidden_size)
    clf.tokenizer_.padding_side = "right"  # as tunefuse pads (left padding would shift Llama's positions)
    batch = clf.tokenizer_(texts, padding=True, truncation=True, max_length=clf.max_length_, return_tensors="pt")
    with torch.no_grad():
        own = torch.softmax(clf.model_.float()(**batch).logits.float(), -1).numpy()
    np.testing.assert_allclose(own, clf.predict_proba(Xt[:6]), atol=2e-2)


def _tiny_tokenizer(texts, **special):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=list(dict.fromkeys(
        special.values()))))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **special)


def test_a_sentence_encoder_with_a_two_layer_head_gets_one_linear_head(reviews, tmp_path):
    """MPNet's (and RoBERTa's) classification head is dense + tanh + out_proj, random for a sentence-transformers
    checkpoint: a mean-pooling model (tiny random MPNet with a 1_Pooling config) gets one linear layer on its
    mean-pooled features instead, which head-only and LP-FT fits probe, and which a saved model gets back."""
    from transformers import MPNetConfig, MPNetModel

    from tunefuse.loading import PooledLinear

    X, y, Xt, _ = reviews
    tok = _tiny_tokenizer(X["text"].tolist(), pad_token="<pad>", cls_token="<s>", sep_token="</s>", unk_token="<unk>",
                          mask_token="<mask>", bos_token="<s>", eos_token="</s>")
    folder = tmp_path / "tiny-mpnet"
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    for strategy in ("head", "lp-ft"):
        clf = Finetuner(str(folder), strategy, epochs=1, max_length=64, verbose=0).fit(X[:64], y[:64])
        assert isinstance(clf.model_.classifier, PooledLinear) and clf.pooling_ == "mean"
        proba = clf.predict_proba(Xt[:8])
        clf.save(tmp_path / strategy)
        again = Finetuner.load(tmp_path / strategy)
        assert isinstance(again.model_.classifier, PooledLinear)
        np.testing.assert_allclose(again.predict_proba(Xt[:8]), proba, atol=1e-5)


@pytest.mark.slow
def test_gpt2_architecture_decoder_from_a_folder_fits_by_every_strategy(reviews, tmp_path):
    """A GPT-2-architecture decoder (tiny random configuration and a BPE tokenizer trained on the reviews: no GPT-2
    weights install here) taken by folder as a hub id would be: no pad token (the EOS stands in); causal-LM
    pretraining lowers its held-out loss; head-only, LP-FT and LoRA fits (and LP-FT of the adapted folder), saved
    and reloaded to the same predictions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    X, y, Xt, _ = reviews
    tok = _tiny_tokenizer(X["text"].tolist(), eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                          unk_token="<|endoftext|>")
    folder = tmp_path / "tiny-gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(
        folder, safe_serialization=True)
    tok.save_pretrained(folder)
    # continued causal-LM pretraining on unlabelled texts lowers the held-out loss and writes a backbone folder
    from tunefuse.pretrain import pretrain

    texts = Xt["text"].tolist()
    adapted = pretrain(texts[:48], X_val=texts[48:], task="text-classification", backbone=str(folder),
                       out=tmp_path / "adapted", epochs=3, batch_size=8, lr=3e-3, max_length=64, verbose=0)
    meta = json.loads((adapted / "pretrain.json").read_text())
    assert meta["objective"] == "clm" and meta["history"][-1]["val_loss"] < meta["history"][0]["val_loss"]
    for strategy, source in (("head", folder), ("lp-ft", folder), ("lora", folder), ("lp-ft", adapted)):
        clf = Finetuner(str(source), strategy, epochs=1, max_length=64, verbose=0).fit(X[:64], y[:64])
        assert type(clf.model_).__name__ == "GPT2ForSequenceClassification"
        proba = clf.predict_proba(Xt[:8])
        assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1, atol=1e-5)
        clf.save(tmp_path / f"{strategy}-{source.name}")
        again = Finetuner.load(tmp_path / f"{strategy}-{source.name}")
        np.testing.assert_allclose(again.predict_proba(Xt[:8]), proba, atol=1e-5)
