"""tunefuse against Hugging Face's Trainer, one run, same model, data and hyperparameters; training and inference.

MiniLM-L6 on 2,000 Women's E-Commerce reviews (label Rating >= 4), test on the last 4,000; 1 epoch, batch 16,
lr 5e-5, max length 128, linear decay, no warmup, no weight decay, AdamW, grad-norm clip 1.0 (Trainer's defaults).

    python bench/finetune_speed.py                          # 3 seeds, about 35 minutes on 2 cores
    python bench/finetune_speed.py --quick                  # 1 seed, 500 train / 1,000 test reviews, 3 rows: minutes
    python bench/finetune_speed.py --isa avx512_core_bf16   # oneDNN capped below AMX (AVX512-BF16 only)

The peer is pinned to the Trainer with ``bf16=True`` (its accuracy is ``hf_acc``); ``hf_trainer_bf16_same_settings``
gives the Trainer tunefuse's model settings (dropout 0, eager attention), so R3 is what the loop itself buys.
Throughput is training examples (and real, unpadded tokens) per second of ``fit`` / ``trainer.train()``
(tokenisation and model loading included for tunefuse, excluded for the Trainer: its datasets are tokenised before
the clock starts). Each row runs in a fresh process, so its peak memory (max RSS) is its own and no row inherits
another's allocator or thread state. Every model is scored by the same evaluator (bf16 autocast, length-sorted
batches), so accuracy differences come from training alone. Ablation rows (seed 0) show what each tunefuse choice
buys. GFLOP/s counts useful work (real tokens) against a matmul peak measured in the same run.

Inference (seed 0, in the tunefuse row's process): tunefuse's ``predict_proba`` on the 4,000 test reviews
(tokenisation included) against the Trainer's ``predict`` with ``bf16=True`` on the same weights (dataset tokenised
before the clock), alternated three times so both see the same moments of the machine; P is the median paired ratio.
Where ``onnxruntime`` is installed, the same model exported to ONNX and run by ONNX Runtime on tunefuse's
length-sorted batches.

``--isa`` sets ``ONEDNN_MAX_CPU_ISA`` for every row before torch loads (oneDNN's documented cap): on an AMX CPU,
``avx512_core_bf16`` runs bf16 matmuls on AVX512-BF16 alone (on this Intel CPU at about half fp32's speed, unlike
AMD Zen 4, so it is its own CPU kind, not a Zen 4 proxy). Results go to
``bench/results/finetune_speed_<cpu kind>.txt`` (e.g. ``intel-amx``, ``intel-avx512bf16-capped``, ``amd-avx512bf16``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=None, help="training reviews (default 2000; --quick 500)")
    ap.add_argument("--test", type=int, default=None, help="test reviews (default 4000; --quick 1000)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds of the headline rows (default 3; --quick 1)")
    ap.add_argument("--rows", default=None, help="comma-separated subset of rows")
    ap.add_argument("--quick", action="store_true", help="1 seed, 500/1,000 reviews, the three headline rows")
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA for every row, e.g. avx512_core_bf16 (no AMX)")
    ap.add_argument("--no-predict", action="store_true", help="skip the inference rows")
    ap.add_argument("--out", default=None, help="results file (default bench/results/finetune_speed_<kind>.txt)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one row in this process: ROW:SEED:PREDICT
    return ap.parse_args()


ARGS = parse()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.cpu import prepare  # noqa: E402  (torch-free)

prepare(ARGS.isa)  # before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.cpu import Report, cpu_flags, cpu_kind, cpu_summary  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.backbones import resolve_backbone  # noqa: E402
from tunefuse.data import collate, predict_batches, tokenize  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.loading import quiet_transformers  # noqa: E402

HP = dict(epochs=1, batch_size=16, lr=5e-5, max_length=128)
SAME_SETTINGS = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")


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


def hf_trainer(X, y, Xt, seed: int, predict: bool, model_kwargs: dict | None = None, **args):
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    source = resolve_backbone("minilm-l6")[0]
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2, **(model_kwargs or {}))
    enc = tok(X, truncation=True, max_length=HP["max_length"])
    ds = [{"input_ids": i, "attention_mask": m, "labels": int(label)}
          for i, m, label in zip(enc["input_ids"], enc["attention_mask"], y)]
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        targs = TrainingArguments(output_dir=folder, per_device_train_batch_size=HP["batch_size"],
                                  num_train_epochs=HP["epochs"], learning_rate=HP["lr"], seed=seed, use_cpu=True,
                                  report_to="none", save_strategy="no", logging_strategy="no",
                                  disable_tqdm=True, **args)
        trainer = Trainer(model=model, args=targs, train_dataset=ds, processing_class=tok,
                          data_collator=DataCollatorWithPadding(tok))
        t = time.perf_counter()
        trainer.train()
        out["train_s"] = time.perf_counter() - t
        out["peak_rss_mib"] = peak_rss_mib()
    model.eval()
    return model, tok, out, lambda batch: model(**batch).logits


def tunefuse_fit(X, y, Xt, seed: int, predict: bool, micro_batch_overhead: int | None = None,
                 sparse_embedding_grads: bool = True, **params):
    import tunefuse.finetuner as ftm

    ftm.MICRO_BATCH_OVERHEAD = micro_batch_overhead or ftm.MICRO_BATCH_OVERHEAD  # this process runs one row only
    ftm.SPARSE_EMBEDDING_GRADS = sparse_embedding_grads
    clf = Finetuner("minilm-l6", epochs=HP["epochs"], batch_size=HP["batch_size"], lr=HP["lr"],
                    max_length=HP["max_length"], warmup_ratio=0.0, weight_decay=0.0, random_state=seed, verbose=0,
                    **params)
    t = time.perf_counter()
    clf.fit(X, y)
    out = {"train_s": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib()}
    if predict:
        out.update(inference_ab(clf, Xt))
        out.update(onnxruntime_predict(clf, Xt))
    clf.model_.eval()
    # the Finetuner's own forward: with mean pooling (MiniLM's default) the head reads the masked mean, not [CLS]
    return clf.model_, clf.tokenizer_, out, lambda inputs: clf.task_.logits(clf.model_, inputs, clf.pooling_)


def inference_ab(clf: Finetuner, Xt: list[str]) -> dict:
    """tunefuse's ``predict_proba`` (tokenisation included) and the Trainer's ``predict`` with ``bf16=True`` (on a
    dataset tokenised before the clock; the same fine-tuned weights, with the attention a Trainer user's model loads
    with, SDPA), alternated ``PREDICT_ROUNDS`` times in this process so both see the same moments of a noisy machine.
    The Trainer runs at its default eval batch of 8 (the peer) and at 64."""
    import copy

    from transformers import Trainer, TrainingArguments

    model = copy.deepcopy(clf.model_).float()
    model.set_attn_implementation("sdpa")
    tenc = clf.tokenizer_(Xt, truncation=True, max_length=HP["max_length"])
    tds = [{"input_ids": i, "attention_mask": m} for i, m in zip(tenc["input_ids"], tenc["attention_mask"])]
    out: dict[str, list[float]] = {"predict_s": [], "hf_predict_s": [], "hf_predict_b64_s": []}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {key: Trainer(model=model, processing_class=clf.tokenizer_, args=TrainingArguments(
            output_dir=folder, bf16=True, use_cpu=True, report_to="none", disable_tqdm=True, **args))
            for key, args in (("hf_predict_s", {}), ("hf_predict_b64_s", {"per_device_eval_batch_size": 64}))}
        for trainer in trainers.values():
            trainer.predict(tds[:16])  # warm-up, as tunefuse's below
        clf.predict_proba(Xt[:16])
        for _ in range(PREDICT_ROUNDS):
            for key, trainer in trainers.items():
                t = time.perf_counter()
                trainer.predict(tds)
                out[key].append(time.perf_counter() - t)
            t = time.perf_counter()
            clf.predict_proba(Xt)
            out["predict_s"].append(time.perf_counter() - t)
    return out


def onnxruntime_predict(clf: Finetuner, Xt: list[str]) -> dict:
    """The fitted model exported to ONNX (fp32; export time reported apart) and run by ONNX Runtime on tunefuse's
    length-sorted batches, tokenisation included as in tunefuse's row."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"ort_note": "onnxruntime not installed (pip install onnxruntime onnx)"}

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = clf.model_

        def forward(self, input_ids, attention_mask):
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            return clf.task_.logits(self.model, inputs, clf.pooling_)

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        example = collate([[101, 2023, 102], [101, 102]], clf.tokenizer_.pad_token_id)
        t = time.perf_counter()
        try:
            torch.onnx.export(Logits().eval().float(), (example["input_ids"], example["attention_mask"]), path,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                            "attention_mask": {0: "batch", 1: "length"}}, dynamo=False)
        except Exception as e:  # the exporter's optional dependencies (onnx) missing, or an unsupported op
            return {"ort_note": f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        export_s = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        ids = tokenize(clf.tokenizer_, Xt, HP["max_length"])
        lengths = np.array([len(x) for x in ids])
        for rows in predict_batches(lengths, 8192):
            batch = collate([ids[i] for i in rows], clf.tokenizer_.pad_token_id)
            session.run(None, {k: v.numpy() for k, v in batch.items()})
        return {"ort_predict_s": time.perf_counter() - t, "ort_export_s": export_s}


PREDICT_ROUNDS = 3


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass(frozen=True)
class RowSpec:
    runner: object
    kwargs: dict
    headline: bool  # every seed (headline rows) or seed 0 only (ablations)
    note: str


ROWS = {
    "hf_trainer_default": RowSpec(hf_trainer, {}, False, "Trainer, defaults (fp32)"),
    "hf_trainer_bf16": RowSpec(hf_trainer, {"bf16": True}, True, "Trainer, bf16=True: the peer"),
    "hf_trainer_bf16_same_settings": RowSpec(hf_trainer, {"bf16": True, "model_kwargs": SAME_SETTINGS}, True,
                                             "Trainer, bf16, tunefuse's model settings (dropout 0, eager)"),
    "hf_trainer_bf16_group_by_length": RowSpec(hf_trainer, {"bf16": True,
                                                            "train_sampling_strategy": "group_by_length"}, False,
                                               "Trainer, bf16 + group_by_length"),
    "tunefuse": RowSpec(tunefuse_fit, {}, True, "tunefuse, defaults"),
    "tunefuse_no_packing": RowSpec(tunefuse_fit, {"packing": False}, False, "padded batches instead of packed"),
    "tunefuse_dense_embedding_grads": RowSpec(tunefuse_fit, {"sparse_embedding_grads": False}, False,
                                              "dense token-embedding gradient and AdamW step"),
    "tunefuse_fp32": RowSpec(tunefuse_fit, {"precision": "fp32"}, False, "no bf16 autocast"),
    "tunefuse_dropout_0.1": RowSpec(tunefuse_fit, {"dropout": None}, False, "the backbone's dropout 0.1"),
    "tunefuse_sdpa": RowSpec(tunefuse_fit, {"config_overrides": {"attn_implementation": "sdpa"}}, False,
                             "fused SDPA attention instead of eager"),
    "tunefuse_micro_batches_256": RowSpec(tunefuse_fit, {"micro_batch_overhead": 256}, False,
                                          "batches split into length-sorted micro-batches"),
}
QUICK_ROWS = ("hf_trainer_bf16", "hf_trainer_bf16_same_settings", "tunefuse")
# The default run: the headline rows, the Trainer's defaults and the ablations of this release's speed paths; the
# other rows (bf16 autocast, dropout, SDPA, micro-batches, length grouping) were measured in earlier runs (README)
# and run with --rows.
DEFAULT_ROWS = ("hf_trainer_default", "hf_trainer_bf16", "hf_trainer_bf16_same_settings", "tunefuse",
                "tunefuse_no_packing", "tunefuse_dense_embedding_grads")


def worker(spec: str, n_train: int, n_test: int) -> None:
    """One row, one seed, in this process; prints one JSON line for the parent."""
    name, seed, predict = spec.split(":")
    row = ROWS[name]
    X, y, Xt, yt = load_reviews(n_train, n_test)
    X, Xt = X["text"].tolist(), Xt["text"].tolist()
    model, tok, out, logits = row.runner(X, y, Xt, int(seed), predict == "1", **row.kwargs)
    lengths = np.array([len(t) for t in tokenize(tok, X, HP["max_length"])])
    cfg = model.config
    dense = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    out.update(examples_s=len(X) * HP["epochs"] / out["train_s"],
               tokens_s=float(lengths.sum()) * HP["epochs"] / out["train_s"],
               gflops=train_flops(lengths, dense, cfg.num_hidden_layers, cfg.hidden_size) * HP["epochs"]
               / out["train_s"] / 1e9,
               acc=accuracy(logits, tok, Xt, yt), n_test=len(Xt))
    print("RESULT " + json.dumps(out), flush=True)


def run_row(name: str, seed: int, predict: bool, n_train: int, n_test: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", f"{name}:{seed}:{int(predict)}", "--train", str(n_train),
           "--test", str(n_test)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"row {name} seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    n_train = ARGS.train or (500 if ARGS.quick else 2000)
    n_test = ARGS.test or (1000 if ARGS.quick else 4000)
    if ARGS.worker:
        return worker(ARGS.worker, n_train, n_test)
    seeds = ARGS.seeds or (1 if ARGS.quick else 3)
    names = ARGS.rows.split(",") if ARGS.rows else list(QUICK_ROWS if ARGS.quick else DEFAULT_ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"--rows: unknown row(s) {unknown}; valid: {', '.join(ROWS)}")
    say = Report()

    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    say(f"finetune_speed{' (quick)' if ARGS.quick else ''}: {cpu_summary()}")
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak 2048x2048: fp32 "
        f"{peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; {n_train} train, {n_test} test reviews; "
        f"one process per row")
    results: dict[str, list[dict]] = {}
    for seed in range(seeds):
        for name in names:
            if seed > 0 and not ROWS[name].headline:
                continue
            predict = seed == 0 and not ARGS.no_predict and name == "tunefuse"
            r = run_row(name, seed, predict, n_train, n_test)
            results.setdefault(name, []).append(r)
            pred = f"  predict {n_test / np.median(r['predict_s']):6.1f} ex/s" if "predict_s" in r else ""
            say(f"  seed {seed} {name:34s} {r['examples_s']:6.1f} ex/s {r['tokens_s']:7.0f} tok/s  acc "
                f"{r['acc']:.4f}  {r['gflops']:5.1f} GFLOP/s  peak {r['peak_rss_mib']:5.0f} MiB{pred}")

    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in ("examples_s", "tokens_s", "acc", "gflops",
                                                                "peak_rss_mib")} for k, v in results.items()}
    say(f"\n{'row':34s} {'seeds':>5s} {'examples/s':>10s} {'tokens/s':>8s} {'test acc':>9s} {'GFLOP/s':>8s} "
        f"{'% bf16 peak':>11s} {'peak MiB':>8s}")
    for name, m in mean.items():
        say(f"{name:34s} {len(results[name]):5d} {m['examples_s']:10.1f} {m['tokens_s']:8.0f} {m['acc']:9.4f} "
            f"{m['gflops']:8.1f} {100 * m['gflops'] / peak['bf16']:10.1f}% {m['peak_rss_mib']:8.0f}")

    inf = results.get("tunefuse", [{}])[0]
    p = "nan"
    if "predict_s" in inf:
        say(f"\ninference on {n_test} test reviews (seed 0's tunefuse model; {PREDICT_ROUNDS} rounds alternated in one "
            "process; median)")
        for key, label in (("hf_predict_s", "Trainer.predict, bf16 (the peer)"),
                           ("hf_predict_b64_s", "Trainer.predict, bf16, eval batch 64"),
                           ("predict_s", "tunefuse predict_proba")):
            secs = np.array(inf[key])
            say(f"  {label:38s} {np.median(secs):6.1f} s  {n_test / np.median(secs):6.1f} ex/s  "
                f"(rounds: {', '.join(f'{x:.1f}' for x in secs)} s)")
        if "ort_predict_s" in inf:
            say(f"  {'ONNX Runtime (tunefuse model, fp32)':38s} {inf['ort_predict_s']:6.1f} s  "
                f"{n_test / inf['ort_predict_s']:6.1f} ex/s  (+{inf['ort_export_s']:.1f} s export)")
        elif "ort_note" in inf:
            say(f"  ONNX Runtime: {inf['ort_note']}")
        paired = np.array(inf["hf_predict_s"]) / np.array(inf["predict_s"])
        say(f"predict speedup over the Trainer per round: {', '.join(f'{x:.2f}' for x in paired)}; over its eval "
            f"batch 64: {np.median(np.array(inf['hf_predict_b64_s']) / np.array(inf['predict_s'])):.2f}")
        p = f"{np.median(paired):.2f}"

    if {"hf_trainer_bf16", "tunefuse"} <= mean.keys():
        tf, peer = results["tunefuse"], results["hf_trainer_bf16"]
        per_seed = [a["examples_s"] / b["examples_s"] for a, b in zip(tf, peer)]
        say(f"\nspeedup over the Trainer with bf16=True per seed: {', '.join(f'{r:.2f}' for r in per_seed)} "
            f"(mean {np.mean(per_seed):.2f}, min {min(per_seed):.2f})")

        def ratio(row: str) -> str:
            return f"{mean['tunefuse']['examples_s'] / mean[row]['examples_s']:.2f}" if row in mean else "nan"

        say(f"speedup_vs_hf_default={ratio('hf_trainer_default')} speedup_vs_hf_best={ratio('hf_trainer_bf16')} "
            f"speedup_vs_hf_same_settings={ratio('hf_trainer_bf16_same_settings')} "
            f"tunefuse_acc={mean['tunefuse']['acc']:.4f} hf_acc={mean['hf_trainer_bf16']['acc']:.4f} "
            f"predict_speedup_vs_hf={p} {cpu_flags()}")
    path = ARGS.out or os.path.join(os.path.dirname(__file__), "results",
                                    f"finetune_speed_{cpu_kind()}{'_quick' if ARGS.quick else ''}.txt")
    say.save(path)


if __name__ == "__main__":
    main()
