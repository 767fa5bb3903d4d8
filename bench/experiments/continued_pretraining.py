"""Experiment: does continued MLM pretraining of MiniLM-L6 on the unlabelled reviews lift an LP-FT member?

Not a tunefuse feature yet (continued pretraining is on the roadmap): the masked-language-model loop is written here
by hand, with a fresh MLM head (all-MiniLM-L6-v2 ships none) and the loss computed at masked positions only. The
pretraining texts are the reviews after the 2,000 labelled ones and before the last 4,000 (the test rows, never
seen). Then LP-FT members with the fusion bench's seeds and lr train from the original and the adapted weights, on
the bench's split, and the table compares their test accuracy.

    python bench/experiments/continued_pretraining.py            # about 25 minutes on 2 cores
    python bench/experiments/continued_pretraining.py --unlabeled 256 --train 200 --test 200 --epochs 1  # smoke
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from tunefuse import Finetuner  # noqa: E402
from tunefuse.backbones import resolve_backbone  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.loading import quiet_transformers  # noqa: E402


def continue_pretraining(texts: list[str], out: str, *, batch_size: int = 32, lr: float = 1e-4, epochs: int = 1,
                         seed: int = 0) -> None:
    """One or more MLM epochs over ``texts`` (length-bucketed batches in random order); writes a backbone folder."""
    from transformers import (AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling,
                              get_linear_schedule_with_warmup)

    src = resolve_backbone("minilm-l6")[0]
    torch.manual_seed(seed)
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(src)
        model = BertForMaskedLM.from_pretrained(src)
    enc = [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    collate = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    order = np.argsort([len(e) for e in enc])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = len(batches) * epochs
    schedule = get_linear_schedule_with_warmup(opt, int(0.06 * total), total)
    rng, step, t0 = np.random.default_rng(seed), 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        for b in rng.permutation(len(batches)):
            batch = collate([{"input_ids": enc[i]} for i in batches[b]])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden = model.bert(input_ids=batch["input_ids"],
                                    attention_mask=(batch["input_ids"] != tok.pad_token_id).long()).last_hidden_state
                masked = batch["labels"] != -100
                logits = model.cls(hidden[masked])  # vocabulary projection at masked positions only
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"][masked])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), schedule.step(), opt.zero_grad()
            step += 1
            if step % 50 == 0 or step == total:
                print(f"  mlm step {step}/{total} loss {loss.item():.3f} {time.perf_counter() - t0:.0f} s", flush=True)
    model.bert.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(out, "1_Pooling"))  # keeps pooling="auto" = mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unlabeled", type=int, default=16000)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()

    pool, _, _, _ = load_reviews(2000 + args.unlabeled, 4000)  # the same shuffle as the benches
    X, y, Xt, yt = load_reviews(args.train, args.test)
    tr, va = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    rows = []
    with tempfile.TemporaryDirectory() as adapted:
        continue_pretraining(pool["text"].iloc[2000:].tolist(), adapted)
        for name, backbone in [("original", "minilm-l6"), ("adapted", adapted)]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                m = Finetuner(backbone, "lp-ft", random_state=seed, lr=3e-5, epochs=args.epochs, verbose=0)
                m.fit(X.iloc[tr], y[tr], X_val=X.iloc[va], y_val=y[va])
                rows.append((name, seed, m.score(Xt, yt)))
                print(f"  {name} seed {seed}: test {rows[-1][2]:.4f} ({m.fit_time_:.0f} s)", flush=True)
    print(f"\n{'weights':10s} {'seed':>4s} {'test acc':>8s}")
    for name, seed, acc in rows:
        print(f"{name:10s} {seed:4d} {acc:8.4f}")


if __name__ == "__main__":
    main()
