"""tunefuse against Hugging Face's Trainer, one run, same model, data and hyperparameters.

MiniLM-L6 on 2,000 Women's E-Commerce reviews (label Rating >= 4), test on the last 4,000; 1 epoch, batch 16,
lr 5e-5, max length 128, linear decay, no warmup, no weight decay, AdamW, grad-norm clip 1.0 (Trainer's defaults).

    python bench/finetune_speed.py                 # seeds 0, 1, 2 (about 35 minutes on 2 cores)
    python bench/finetune_speed.py --seeds 1 --train 500 --test 500    # a quick look

Throughput is training examples per second of ``fit`` / ``trainer.train()`` (tokenisation and model loading
included for tunefuse, excluded for the Trainer: its datasets are tokenised before the clock starts). Every model is
scored by the same evaluator (bf16 autocast, length-sorted batches), so accuracy differences come from training
alone. Ablation rows (one seed) show what each tunefuse speed choice buys. GFLOP/s counts useful work (real tokens,
no padding) against a matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tunefuse import Finetuner  # noqa: E402
from tunefuse.backbones import resolve_backbone  # noqa: E402
from tunefuse.data import collate, predict_batches, tokenize  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.loading import quiet_transformers  # noqa: E402

HP = dict(epochs=1, batch_size=16, lr=5e-5, max_length=128)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def train_flops(lengths: np.ndarray, params: int, layers: int, hidden: int) -> float:
    """Forward + backward FLOPs on real tokens: 6·P per token for the dense layers, 12·d·L² per layer for attention."""
    return 6.0 * params * lengths.sum() + 12.0 * layers * hidden * float((lengths.astype(float) ** 2).sum())


def accuracy(logits, tokenizer, texts, y) -> float:
    """One evaluator for every row: bf16 autocast, length-sorted batches, argmax of ``logits(batch)``."""
    ids = tokenize(tokenizer, texts, HP["max_length"])
    lengths = np.array([len(x) for x in ids])
    pred = np.empty(len(ids), dtype=int)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for rows in predict_batches(lengths, 8192):
            pred[rows] = logits(collate([ids[i] for i in rows], tokenizer.pad_token_id)).argmax(-1).numpy()
    return float((pred == y).mean())


def hf_trainer(X, y, seed: int, **args):
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    source = resolve_backbone("minilm-l6")[0]
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    enc = tok(X, truncation=True, max_length=HP["max_length"])
    ds = [{"input_ids": i, "attention_mask": m, "labels": int(label)}
          for i, m, label in zip(enc["input_ids"], enc["attention_mask"], y)]
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=HP["batch_size"],
                                  num_train_epochs=HP["epochs"], learning_rate=HP["lr"], seed=seed, use_cpu=True,
                                  report_to="none", save_strategy="no", logging_strategy="no",
                                  disable_tqdm=True, **args)
        trainer = Trainer(model=model, args=targs, train_dataset=ds, processing_class=tok,
                          data_collator=DataCollatorWithPadding(tok))
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    model.eval()
    return model, tok, seconds, lambda batch: model(**batch).logits


def tunefuse_fit(X, y, seed: int, micro_batch_overhead: int | None = None, **params):
    import tunefuse.finetuner as ftm

    default = ftm.MICRO_BATCH_OVERHEAD
    ftm.MICRO_BATCH_OVERHEAD = micro_batch_overhead or default
    try:
        return _tunefuse_fit(X, y, seed, **params)
    finally:
        ftm.MICRO_BATCH_OVERHEAD = default


def _tunefuse_fit(X, y, seed: int, **params):
    clf = Finetuner("minilm-l6", epochs=HP["epochs"], batch_size=HP["batch_size"], lr=HP["lr"],
                    max_length=HP["max_length"], warmup_ratio=0.0, weight_decay=0.0, random_state=seed, verbose=0,
                    **params)
    t = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - t
    clf.model_.eval()
    # the Finetuner's own forward: with mean pooling (MiniLM's default) the head reads the masked mean, not [CLS]
    return clf.model_, clf.tokenizer_, seconds, lambda inputs: clf.task_.logits(clf.model_, inputs, clf.pooling_)


ROWS = {  # name -> (runner, kwargs, every seed?)
    "hf_trainer_default": (hf_trainer, {}, True),
    "hf_trainer_bf16": (hf_trainer, {"bf16": True}, True),
    "hf_trainer_bf16_group_by_length": (hf_trainer, {"bf16": True, "train_sampling_strategy": "group_by_length"},
                                        True),
    "tunefuse": (tunefuse_fit, {}, True),
    "tunefuse_fp32": (tunefuse_fit, {"precision": "fp32"}, False),  # what bf16 autocast buys
    "tunefuse_dropout_0.1": (tunefuse_fit, {"dropout": None}, False),  # the backbone's dropout: what 0 buys
    "tunefuse_sdpa": (tunefuse_fit, {"config_overrides": {"attn_implementation": "sdpa"}}, False),  # eager vs fused
    "tunefuse_micro_batches_256": (tunefuse_fit, {"micro_batch_overhead": 256}, False),  # split batches by length
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of rows")
    args = ap.parse_args()

    X, y, Xt, yt = load_reviews(args.train, args.test)
    X, Xt = X["text"].tolist(), Xt["text"].tolist()
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak 2048x2048: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; "
          f"torch threads {torch.get_num_threads()}; {len(X)} train, {len(Xt)} test reviews", flush=True)
    results: dict[str, list[tuple[float, float, float]]] = {}
    for seed in range(args.seeds):
        for name in args.rows.split(","):
            runner, kwargs, every_seed = ROWS[name]
            if seed > 0 and not every_seed:
                continue
            model, tok, seconds, logits = runner(X, y, seed, **kwargs)
            lengths = np.array([len(t) for t in tokenize(tok, X, HP["max_length"])])
            cfg = model.config
            dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
            gflops = train_flops(lengths, dense, cfg.num_hidden_layers, cfg.hidden_size) / seconds / 1e9
            acc = accuracy(logits, tok, Xt, yt)
            results.setdefault(name, []).append((len(X) / seconds, acc, gflops))
            print(f"  seed {seed} {name:34s} {len(X) / seconds:6.1f} ex/s  acc {acc:.4f}  {gflops:5.1f} GFLOP/s",
                  flush=True)

    mean = {k: np.mean(v, axis=0) for k, v in results.items()}
    print(f"\n{'row':34s} {'seeds':>5s} {'examples/s':>10s} {'test acc':>9s} {'GFLOP/s':>8s} {'% bf16 peak':>11s}")
    for name, (speed, acc, gf) in mean.items():
        print(f"{name:34s} {len(results[name]):5d} {speed:10.1f} {acc:9.4f} {gf:8.1f} {100 * gf / peak['bf16']:10.1f}%")
    if {"hf_trainer_default", "tunefuse"} <= mean.keys():
        hf_default = mean["hf_trainer_default"]
        hf_rows = [k for k in mean if k.startswith("hf_trainer")]
        # the peer to beat: the fastest Trainer row whose accuracy stays within 0.5 points of its defaults
        ok = [k for k in hf_rows if mean[k][1] >= hf_default[1] - 0.005]
        best = max(ok, key=lambda k: mean[k][0])
        tf = mean["tunefuse"]
        print(f"\npeer = {best} (fastest Trainer row within 0.5 points of Trainer's default accuracy)")
        print(f"speedup_vs_hf_default={tf[0] / hf_default[0]:.2f} speedup_vs_hf_best={tf[0] / mean[best][0]:.2f} "
              f"tunefuse_acc={tf[1]:.4f} hf_acc={hf_default[1]:.4f}")


if __name__ == "__main__":
    main()
