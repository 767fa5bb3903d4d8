"""Experiment: which SmolLM2-135M layer makes the best frozen features for the reviews task?

Chose the bench's SmolLM2 member (first 20 of 30 layers, mean-pooled). One forward pass over the 2,000 labelled
reviews, each wrapped in the model's chat template with a question, keeps every layer's hidden states (the residual
stream before the final norm), pooled two ways: the mask-weighted mean and the last token. Each layer and pooling
is scored by 5-fold logistic regression on standardised features (best C of a small grid, so optimistic alike for
every row). Hand-written here because it reads every layer in one pass, which a Finetuner does not expose.

    python bench/experiments/smollm2_layers.py      # ~8 minutes on 2 cores
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from tunefuse.backbones import resolve_backbone  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.loading import quiet_transformers  # noqa: E402

LAYERS = (4, 8, 12, 16, 20, 24, 30)


def layer_features(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoModel, AutoTokenizer

    source, entry = resolve_backbone("smollm2-135m")
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source, **entry.load_kwargs)
        model = AutoModel.from_pretrained(source, dtype=torch.float32, **entry.load_kwargs).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": f'Review of a clothing item: "{t}"\n'
                                         "Did the customer like the item?"}], tokenize=False,
                                       add_generation_prompt=True) for t in texts]
    order = np.argsort([len(p) for p in prompts])  # length-sorted batches: little padding
    mean = np.zeros((len(LAYERS), len(texts), model.config.hidden_size), np.float32)
    last = np.zeros_like(mean)
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            rows = order[start:start + 16]
            batch = tok([prompts[i] for i in rows], truncation=True, max_length=192, padding=True,
                        return_tensors="pt")
            hidden = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).float()
            end = batch["attention_mask"].sum(1) - 1  # right padding: the last real token
            for j, layer in enumerate(LAYERS):
                h = hidden[layer]
                mean[j, rows] = ((h * mask).sum(1) / mask.sum(1)).numpy()
                last[j, rows] = h[torch.arange(len(rows)), end].numpy()
    return mean, last


def main() -> None:
    X, y, _, _ = load_reviews(2000, 4000)
    y = np.asarray(y)
    t0 = time.perf_counter()
    mean, last = layer_features(list(X["text"]))
    print(f"features of {len(y)} reviews at layers {LAYERS} in {time.perf_counter() - t0:.0f} s")
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print("layer  mean-pooled  last token   (5-fold accuracy, standardised logistic regression, best C of 3)")
    for j, layer in enumerate(LAYERS):
        scores = []
        for feats in (mean[j], last[j]):
            scores.append(max((cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(
                C=C, max_iter=3000)), feats, y, cv=folds) == y).mean() for C in (0.003, 0.01, 0.03)))
        print(f"{layer:<6} {scores[0]:.4f}       {scores[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
