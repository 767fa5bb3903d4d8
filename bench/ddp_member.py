"""One member fitted data-parallel: run under `torchrun --nproc-per-node N`; rank 0 writes the test probabilities.

    torchrun --nproc-per-node 2 bench/ddp_member.py --out /tmp/ddp2.npy      (gloo on CPU)
    torchrun --nproc-per-node 1 bench/ddp_member.py --out /tmp/ddp1.npy      (the same global batches, one process)

Every rank draws the same global batch of 16 and trains on its share (tunefuse.train.train_loop); the summed
gradients make each step the one-process step, so the two runs agree up to float summation order.
bench/scale.py runs both and prints ddp_metric_delta; tests/test_scale.py runs it at tiny scale.
"""
import argparse
import json
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--n-train", type=int, default=400)
p.add_argument("--n-test", type=int, default=400)
p.add_argument("--layers", type=int, default=None, help="cut MiniLM-L6 to its first N layers (tests: 1)")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--val", type=int, default=0, help="hold out N training rows for early stopping (patience 1)")
p.add_argument("--checkpoint-dir", default=None, help="save the training state there (resumable; removed at the end)")
a = p.parse_args()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402

torch.set_num_threads(1)  # one thread per process: 2 processes on 2 cores
X_train, y_train, X_test, y_test = load_reviews(n_train=a.n_train, n_test=a.n_test, seed=0)
over = {"num_hidden_layers": a.layers} if a.layers else None
est = Finetuner("minilm-l6", "full", epochs=a.epochs, batch_size=16, early_stopping=a.val > 0, patience=1,
                config_overrides=over, checkpoint_dir=a.checkpoint_dir, random_state=0, verbose=0)
if a.val:
    y = np.asarray(y_train)
    est.fit(X_train.iloc[a.val:], y[a.val:], X_val=X_train.iloc[:a.val], y_val=y[:a.val])
else:
    est.fit(X_train, y_train)
proba = est.predict_proba(X_test)
rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
if rank == 0:
    acc = float((est.classes_[proba.argmax(1)] == np.asarray(y_test)).mean())
    np.save(a.out, proba)
    with open(a.out + ".json", "w") as f:
        json.dump({"world": world, "accuracy": acc, "fit_time_s": est.fit_time_,
                   "val_scores": [r["val_score"] for r in est.history_ if "val_score" in r]}, f)
    print(json.dumps({"world": world, "accuracy": acc, "fit_time_s": round(est.fit_time_, 2)}))
if dist.is_initialized():
    dist.destroy_process_group()
