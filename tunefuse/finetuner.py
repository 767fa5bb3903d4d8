"""``Finetuner``: fine-tune a pretrained backbone with a new head, as a scikit-learn classifier."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from . import features
from .backbones import resolve_backbone
from .checkpoint import atomic_folder, read_json, write_json
from .data import as_labels, as_texts, collate, predict_batches, split_by_length, tokenize
from .device import attention_implementation, autocast, pick_device, resolve_precision
from .strategies import get_strategy
from .train import (PROBE_L2_GRID, PROBE_L2_GRID_STANDARDIZED, LoopConfig, LoopState, fit_linear_probe,
                    fit_standardized_probe, linear_schedule, make_optimizer,
                    param_groups, train_loop)

FORMAT = "tunefuse.finetuner/1"
# Per-forward fixed cost in token-equivalents, used to cut a batch into length-sorted micro-batches. Measured with
# MiniLM-L6 on 2 CPU cores (bench/finetune_speed.py, row tunefuse_micro_batches_256): at batch 16 the smaller
# matmuls cost more than the padding they save, so only large batches of very uneven lengths are split.
MICRO_BATCH_OVERHEAD = 4096
HEAD_INIT_SEED = 0
POOLINGS = ("auto", "mean", "native")
PREDICT_TOKENS = 8192  # tokens per inference batch: large enough to keep the matmuls efficient, small in memory
# Config names of dropout across architectures: BERT, DistilBERT, GPT-2, Llama (hidden, attention, embeddings).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars: a new head is expected to be 'missing'."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def head_module(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    for name in ("classifier", "score"):  # BERT/RoBERTa/DistilBERT call it classifier; GPT-2/Llama call it score
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name, getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no 'classifier' or 'score' head; use strategy='full'")


def val_metrics(proba: np.ndarray, y: np.ndarray) -> dict:
    """Validation log-loss and accuracy of class probabilities ``proba`` against label indices ``y``."""
    p_true = np.clip(proba[np.arange(len(y)), y], 1e-12, 1)
    return {"val_loss": float(-np.log(p_true).mean()), "val_score": float((proba.argmax(1) == y).mean())}


def _formats(template: str) -> bool:
    """True when ``template.format(text=...)`` works (no stray braces or other fields)."""
    try:
        template.format(text="")
        return True
    except (KeyError, IndexError, ValueError):
        return False


def resolve_pooling(pooling: str, source: str, model: torch.nn.Module) -> str:
    """'mean' or 'native' for ``model`` loaded from ``source``; 'auto' follows the sentence-transformers config."""
    try:
        head = head_module(model)[1]
    except ValueError:
        head = None
    mean_ok = isinstance(head, torch.nn.Linear) and head.in_features == model.config.hidden_size and hasattr(
        model, "base_model_prefix")
    if pooling == "auto":
        path = Path(source) / "1_Pooling" / "config.json"
        declared = json.loads(path.read_text()) if path.is_file() else {}
        return "mean" if declared.get("pooling_mode_mean_tokens") and mean_ok else "native"
    if pooling == "mean" and not mean_ok:
        raise ValueError(f"pooling='mean' needs a linear head on the hidden states; {type(model).__name__} has "
                         f"{type(head).__name__ if head is not None else 'no head'}; fix: pass pooling='native'")
    return pooling


class Finetuner(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained backbone on labelled texts; a scikit-learn classifier (clone, stack, bag, boost it).

    Minimises Σ w_i·CE(y_i, f(x_i)) + weight decay + λ·L2-SP, with label smoothing, layer-wise lr decay and
    early stopping on a validation split that restores the best epoch.

    >>> clf = Finetuner("minilm-l6", epochs=1, config_overrides={"num_hidden_layers": 1}, verbose=0)
    >>> clf.fit(["great dress", "awful fit", "love it", "poor quality"], [1, 0, 1, 0]).predict(["lovely"]).shape
    (1,)
    """

    def __init__(self, backbone: str = "minilm-l6", strategy: str = "full", *, epochs: int = 3,
                 batch_size: int = 16, lr: float | None = None, probe_l2: float | None = None,
                 probe_standardize: bool = False,
                 weight_decay: float = 0.01, l2sp: float = 0.0, layer_decay: float = 1.0,
                 label_smoothing: float = 0.0, warmup_ratio: float = 0.06, max_grad_norm: float | None = 1.0,
                 early_stopping: bool | str = "auto", validation_fraction: float = 0.1, patience: int = 2,
                 max_length: int | None = None, template: str | None = None, lora_r: int = 8, lora_alpha: int = 16,
                 freeze_embeddings: bool = False, dropout: float | None = 0.0, pooling: str = "auto",
                 precision: str = "auto", device: str = "auto",
                 config_overrides: dict | None = None, trust_remote_code: bool = False,
                 random_state: int = 0, verbose: int = 1):
        self.backbone = backbone
        self.strategy = strategy
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr  # None: the strategy's default (5e-5 full, 3e-5 LP-FT, 5e-4 LoRA; the probe has no lr)
        # L2 strength of the linear probe (head and lp-ft's first stage); None: picked on validation from a grid
        self.probe_l2 = probe_l2
        # Fit the probe on standardised features (folded back into the head: the saved model reads raw features).
        # Off by default, which keeps earlier fits reproducible. On, SmolLM2's mean-pooled probe bag went from 0.8895 to
        # 0.8965 out-of-fold but not up on test, 0.8842 to 0.8830 (bench/results/fusion_quality.txt, two runs).
        self.probe_standardize = probe_standardize
        self.weight_decay = weight_decay
        self.l2sp = l2sp
        self.layer_decay = layer_decay
        self.label_smoothing = label_smoothing
        self.warmup_ratio = warmup_ratio
        self.max_grad_norm = max_grad_norm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.max_length = max_length
        # A format string with one "{text}" that wraps every text before tokenisation (training, validation,
        # prediction and the cached features alike). Decoders pool better features from a prompted text, e.g.
        # 'Review: "{text}"\nDid the customer like the item?'. None: the raw text.
        self.template = template
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.freeze_embeddings = freeze_embeddings
        # Backbone dropout (hidden and attention). 0 by default: Bernoulli masks are slow on CPU (1.9x, row
        # tunefuse_dropout_0.1 of bench/finetune_speed.py) and the short fine-tunes measured there lose no accuracy.
        # None keeps the backbone's own (0.1 for BERT); raise it for long runs on little data.
        self.dropout = dropout
        # What the head reads: "mean" (attention-masked mean of the last hidden states: what sentence-transformers
        # checkpoints such as all-MiniLM-L6-v2 were trained for), "native" (the architecture's own head input: BERT's
        # pooled [CLS], a decoder's last token) or "auto" (the checkpoint's sentence-transformers pooling if it
        # declares one, else native).
        self.pooling = pooling
        self.precision = precision
        self.device = device
        self.config_overrides = config_overrides  # e.g. {"num_hidden_layers": 2}: loads the first 2 pretrained layers
        self.trust_remote_code = trust_remote_code
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation and building
    def _check_params(self) -> None:
        get_strategy(self.strategy)
        checks = [("epochs", self.epochs, self.epochs >= 1, "an int >= 1"),
                  ("batch_size", self.batch_size, self.batch_size >= 1, "an int >= 1"),
                  ("lr", self.lr, self.lr is None or self.lr > 0, "a float > 0 or None"),
                  ("probe_l2", self.probe_l2, self.probe_l2 is None or self.probe_l2 >= 0, "a float >= 0 or None"),
                  ("probe_standardize", self.probe_standardize, self.probe_standardize in (True, False),
                   "True or False"),
                  ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a float >= 0"),
                  ("l2sp", self.l2sp, self.l2sp >= 0, "a float >= 0"),
                  ("layer_decay", self.layer_decay, 0 < self.layer_decay <= 1, "a float in (0, 1]"),
                  ("label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "a float in [0, 1)"),
                  ("warmup_ratio", self.warmup_ratio, 0 <= self.warmup_ratio < 1, "a float in [0, 1)"),
                  ("validation_fraction", self.validation_fraction, 0 < self.validation_fraction < 1,
                   "a float in (0, 1)"),
                  ("patience", self.patience, self.patience >= 1, "an int >= 1"),
                  ("early_stopping", self.early_stopping, self.early_stopping in (True, False, "auto"),
                   "True, False or 'auto'"),
                  ("dropout", self.dropout, self.dropout is None or 0 <= self.dropout < 1,
                   "a float in [0, 1) or None"),
                  ("pooling", self.pooling, self.pooling in POOLINGS, f"one of {list(POOLINGS)}"),
                  ("max_length", self.max_length, self.max_length is None or self.max_length >= 8, "an int >= 8"),
                  ("template", self.template, self.template is None or (
                      isinstance(self.template, str) and self.template.count("{text}") == 1 and _formats(
                          self.template)), "None or a str with exactly one '{text}' and no other {...} field")]
        for name, value, ok, valid in checks:
            if not ok:
                raise ValueError(f"{name}={value!r} is invalid; fix: pass {valid}")
        pick_device(self.device)

    def _build(self, num_labels: int):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        source, entry = resolve_backbone(self.backbone)
        load = dict(entry.load_kwargs if entry else {}, trust_remote_code=self.trust_remote_code)
        # GGUF weights are dequantised to float32; anything else must be safetensors (never a pickle)
        weights = {"dtype": torch.float32} if "gguf_file" in load else {"use_safetensors": True}
        kwargs = dict({"attn_implementation": attention_implementation(pick_device(self.device))},
                      **(self.config_overrides or {}), **load, **weights)
        try:
            with quiet_transformers():
                if self.dropout is not None:
                    config = AutoConfig.from_pretrained(source, **load)
                    kwargs.update({k: self.dropout for k in DROPOUT_KEYS if isinstance(getattr(config, k, None),
                                                                                        float)})
                tokenizer = AutoTokenizer.from_pretrained(source, **load)
                model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels, **kwargs)
            if "gguf_file" in load:  # dequantised to plain float32 weights: save as an ordinary safetensors model
                model.hf_quantizer, model.is_quantized = None, False
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
        except ImportError as e:  # e.g. gguf, which only the GGUF backbones need
            raise ValueError(f"backbone={self.backbone!r} needs a package that is not installed ({str(e)[:200]}); "
                             f"fix: {(entry.install if entry else '') or 'install the package the message names'}"
                             ) from e
        except (OSError, ValueError) as e:
            raise ValueError(f"backbone={self.backbone!r} could not be loaded from {source!r} ({str(e)[:200]}); fix: "
                             "pass a registered name, a folder with config.json + model.safetensors + tokenizer, "
                             "or a hub id while online") from e
        if tokenizer.pad_token_id is None:  # decoders (GPT-2, Llama) ship without a pad token
            tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        max_length = self.max_length or (entry.max_length if entry else 128)
        return model, tokenizer, max_length, source

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None):
        """Fine-tune on texts ``X`` and labels ``y``; ``X_val``/``y_val`` drive early stopping when given."""
        t0 = time.perf_counter()
        self._check_params()
        texts = as_texts(X)
        y = as_labels(y, len(texts))
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y has a single class {self.classes_.tolist()}; a classifier needs at least 2: check "
                             "the label column and the filtering that produced it")
        w = np.ones(len(texts)) if sample_weight is None else np.asarray(sample_weight, dtype=float).ravel()
        if w.shape != (len(texts),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"sample_weight must be {len(texts)} finite non-negative numbers with a positive sum; "
                             f"got shape {w.shape}; fix: pass one weight per row, or None")
        self._fit_targets(texts, y_idx, w, self._validation(X_val, y_val))
        self.fit_time_ = time.perf_counter() - t0
        return self

    def fit_soft(self, X, proba, classes, X_val=None, y_val=None):
        """Fit on soft labels ``proba`` (n_samples, n_classes) over ``classes``: distillation from an ensemble."""
        t0 = time.perf_counter()
        self._check_params()
        texts = as_texts(X)
        proba = np.asarray(proba, dtype=np.float32)
        self.classes_ = np.asarray(classes)
        if proba.shape != (len(texts), len(self.classes_)) or not np.allclose(proba.sum(1), 1, atol=1e-3):
            raise ValueError(f"proba has shape {proba.shape}; fix: pass one probability row per text over "
                             f"{len(self.classes_)} classes, each row summing to 1 (e.g. teacher.predict_proba(X))")
        self._fit_targets(texts, proba, np.ones(len(texts)), self._validation(X_val, y_val))
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _validation(self, X_val, y_val):
        if X_val is None:
            return None
        texts = as_texts(X_val, "X_val")
        return texts, self._encode(as_labels(y_val, len(texts), "y_val"), "y_val")

    def _fit_targets(self, texts, targets, w, val) -> None:
        """Carve a validation split when early stopping needs one, then train under a private RNG."""
        stop = self.early_stopping is True or (self.early_stopping == "auto" and (self.epochs > 1 or val))
        if val is None and stop:
            hard = targets if targets.ndim == 1 else targets.argmax(1)
            counts = np.bincount(hard)
            strat = hard if counts[counts > 0].min() >= 2 and len(texts) * self.validation_fraction >= len(
                counts) else None
            tr, va = train_test_split(np.arange(len(texts)), test_size=self.validation_fraction,
                                      random_state=self.random_state, stratify=strat)
            val = ([texts[i] for i in va], hard[va])
            texts, targets, w = [texts[i] for i in tr], targets[tr], w[tr]
        self.device_ = pick_device(self.device)
        self.precision_ = resolve_precision(self.precision, self.device_)
        with torch.random.fork_rng(devices=[]):  # seeds the head init and dropout without touching the caller's RNG
            self._fit(texts, targets, w, *(val or (None, None)), stop)

    def _fit(self, texts, targets, w, val_texts, val_y, stop) -> None:
        strategy = get_strategy(self.strategy)
        # Every member starts from the same head initialisation whatever its random_state, so members of one
        # backbone share one pretrained start and can be averaged in weight space (model soups need that).
        torch.manual_seed(HEAD_INIT_SEED)
        model, self.tokenizer_, self.max_length_, self.source_ = self._build(len(self.classes_))
        self.pooling_ = resolve_pooling(self.pooling, self.source_, model)
        torch.manual_seed(self.random_state)  # dropout masks (data order has its own seeded generator)
        self.model_ = model.to(self.device_)
        self.history_ = []
        # A backbone that never trains keeps predicting from the shared feature cache (see _proba)
        self.frozen_backbone_ = strategy.tune is None
        y_t, w_t = torch.as_tensor(targets, device=self.device_), torch.as_tensor(w, dtype=torch.float32,
                                                                                   device=self.device_)
        head_name, head = head_module(model)
        if strategy.probe:  # stage 1: linear probe on frozen features, computed once and shared between members
            self._probe(head, texts, y_t, w_t, val_texts, val_y)
        if strategy.tune:
            if strategy.tune == "lora":
                self.model_ = self._with_lora(self.model_)
            else:
                self.model_.requires_grad_(True)
            if self.freeze_embeddings:
                self.model_.get_input_embeddings().requires_grad_(False)
            ids = tokenize(self.tokenizer_, self._prompted(texts), self.max_length_)
            lengths = np.array([len(x) for x in ids])
            pad = self.tokenizer_.pad_token_id

            def forward(batch):
                for chunk in split_by_length(lengths[batch], MICRO_BATCH_OVERHEAD):
                    rows = batch[chunk]
                    inputs = {k: v.to(self.device_) for k, v in collate([ids[i] for i in rows], pad).items()}
                    with autocast(self.device_, self.precision_):
                        yield rows, self._logits(inputs)

            params = [p for p in self.model_.parameters() if p.requires_grad]
            self._stage(self.model_, params, forward, len(texts), y_t, w_t, val_texts=val_texts, val_y=val_y,
                        epochs=self.epochs, lr=self.lr or strategy.lr, stop=stop, stage=strategy.tune,
                        head_name=head_name)
            if strategy.tune == "lora":  # merge the adapters: checkpoints and soups then see a plain HF model
                self.model_ = self.model_.merge_and_unload()
        self.model_.eval().requires_grad_(False)

    def _probe(self, head, texts, y_t, w_t, val_texts, val_y) -> None:
        """Fit the head on cached frozen features by L-BFGS; the L2 strength is picked by validation log-loss."""
        if not isinstance(head, torch.nn.Linear):
            raise ValueError(f"strategy={self.strategy!r} needs a linear head; {type(head).__name__} is not one; "
                             "fix: use strategy='full' or 'lora', or pooling='mean'")
        x = torch.as_tensor(self._features(texts), device=self.device_)
        default_grid = PROBE_L2_GRID_STANDARDIZED if self.probe_standardize else PROBE_L2_GRID
        grid = [self.probe_l2] if self.probe_l2 is not None else (list(default_grid) if val_y is not None else
                                                                   [1.0 / len(x)])  # sklearn's default C=1
        fit = fit_standardized_probe if self.probe_standardize else fit_linear_probe
        init = {k: v.clone() for k, v in head.state_dict().items()}
        val_x = torch.as_tensor(self._features(val_texts), device=self.device_) if val_y is not None else None
        fits = []  # (validation log-loss, l2, head weights) per grid point
        for i, l2 in enumerate(grid):
            head.load_state_dict(init)
            t0 = time.perf_counter()
            record = {"epoch": i + 1, "stage": "probe", "l2": l2,
                      "train_loss": fit(head, x, y_t, w_t, l2, self.label_smoothing)}
            if val_x is not None:
                with torch.inference_mode():
                    proba = torch.softmax(head(val_x).float(), -1).cpu().numpy()
                record.update(val_metrics(proba, val_y))
            record["time_s"] = time.perf_counter() - t0
            self.history_.append(record)
            fits.append((record.get("val_loss", 0.0), l2, {k: v.clone() for k, v in head.state_dict().items()}))
        _, self.probe_l2_, weights = min(fits, key=lambda f: f[0])  # the first of equal losses, as before
        head.load_state_dict(weights)

    def _stage(self, module, params, forward, n, y_t, w_t, *, epochs, lr, stop, stage, head_name,
               val_texts=None, val_y=None) -> None:
        """Run one training stage (probe, full or LoRA) through the shared loop."""
        groups = param_groups(module, lr, self.weight_decay, self.layer_decay,
                              head_names=(head_name, "modules_to_save"))
        optimizer = make_optimizer(groups)
        steps = epochs * -(-n // self.batch_size)
        scheduler = linear_schedule(optimizer, steps, self.warmup_ratio)
        cfg = LoopConfig(epochs=epochs, batch_size=self.batch_size, label_smoothing=self.label_smoothing,
                         max_grad_norm=self.max_grad_norm, l2sp=self.l2sp,
                         patience=self.patience if stop else None, seed=self.random_state)
        anchor = None
        if self.l2sp > 0:  # L2-SP anchors the pretrained backbone; the new head has no anchor
            head_ids = {id(p) for p in head_module(self.model_)[1].parameters()}
            anchor = {id(p): p.detach().clone() for p in params if id(p) not in head_ids}
        best: dict[str, torch.Tensor] = {}
        trainable = [(k, p) for k, p in module.named_parameters() if p.requires_grad]

        def evaluate() -> dict:
            if val_y is None:
                return {}
            return val_metrics(self._proba(as_texts(val_texts, "X_val")), val_y)

        def snapshot() -> None:
            best.update({k: p.detach().clone() for k, p in trainable})

        state = train_loop(forward, n, y_t, w_t, params, optimizer, scheduler, cfg, LoopState(),
                           evaluate=evaluate if val_y is not None else None, snapshot=snapshot, anchor=anchor,
                           train_mode=lambda on: module.train(on), verbose=self.verbose > 0)
        if best and state.best_epoch < state.epoch:  # restore the best epoch's weights (early stopping)
            with torch.no_grad():
                for k, p in trainable:
                    p.copy_(best[k])
        self.history_ += [dict(r, stage=stage) for r in state.history]
        self.loop_state_ = state
        module.eval()

    def _with_lora(self, model):
        from peft import LoraConfig, TaskType, get_peft_model

        try:
            return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=self.lora_r,
                                                    lora_alpha=self.lora_alpha, lora_dropout=0.1))
        except ValueError as e:
            raise ValueError(f"LoRA cannot pick target modules for {type(model).__name__} ({e}); fix: use "
                             "strategy='full' or a backbone peft knows (BERT, RoBERTa, GPT-2, Llama)") from e

    # ------------------------------------------------------------------ inference
    def _features(self, texts) -> np.ndarray:
        """Head inputs of the frozen pretrained backbone, cached per text and shared by every member with the same
        backbone (a bag of head-only members pays for one backbone pass, not one per member)."""
        key = (self.source_, json.dumps(self.config_overrides or {}, sort_keys=True), self.max_length_,
               self.precision_, self.pooling_, self.template)
        return features.cached(key, texts, lambda missing: self._head_inputs(missing))

    def _head_inputs(self, texts: list[str]) -> np.ndarray:
        captured: list[torch.Tensor] = []
        hook = head_module(self.model_)[1].register_forward_pre_hook(lambda m, a: captured.append(a[0]))

        def head_input(inputs: dict) -> torch.Tensor:
            self._logits(inputs)
            x = captured.pop()
            if x.ndim != 2:
                raise ValueError(f"the head of {type(self.model_).__name__} takes {x.ndim}-D input; feature caching "
                                 "needs one vector per text: use pooling='mean', or strategy='full' or 'lora'")
            return x

        try:  # the hook sees the head's input batch by batch; _forward_rows puts the rows back in input order
            return self._forward_rows(texts, head_input).numpy()
        finally:
            hook.remove()

    def _prompted(self, texts: list[str]) -> list[str]:
        return texts if self.template is None else [self.template.format(text=t) for t in texts]

    def _forward_logits(self, texts: list[str]) -> torch.Tensor:
        return self._forward_rows(texts, self._logits)

    def _forward_rows(self, texts: list[str], fn) -> torch.Tensor:
        """``fn(inputs)`` over length-sorted batches (little padding), returned in the order of ``texts``."""
        self.model_.eval()
        ids = tokenize(self.tokenizer_, self._prompted(texts), self.max_length_)
        lengths = np.array([len(x) for x in ids])
        out = None
        with torch.inference_mode(), autocast(self.device_, self.precision_):
            for rows in predict_batches(lengths, PREDICT_TOKENS):
                inputs = collate([ids[i] for i in rows], self.tokenizer_.pad_token_id)
                batch = fn({k: v.to(self.device_) for k, v in inputs.items()}).float().cpu()
                if out is None:
                    out = torch.empty((len(ids), *batch.shape[1:]))
                out[torch.as_tensor(rows)] = batch
        return out

    def _logits(self, inputs: dict) -> torch.Tensor:
        """The model's logits; with mean pooling the head reads the masked mean of the last hidden states."""
        if self.pooling_ != "mean":
            return self.model_(**inputs).logits
        model = self.model_.get_base_model() if hasattr(self.model_, "get_base_model") else self.model_  # peft
        hidden = getattr(model, model.base_model_prefix)(**inputs).last_hidden_state.float()  # sum in fp32
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return head_module(model)[1](getattr(model, "dropout", torch.nn.Identity())(pooled))

    def _proba(self, texts: list[str]) -> np.ndarray:
        if self.frozen_backbone_:  # the backbone is the pretrained one: reuse the shared feature cache
            with torch.inference_mode():
                feats = torch.as_tensor(self._features(texts), device=self.device_)
                logits = head_module(self.model_)[1](feats).float().cpu()
        else:
            logits = self._forward_logits(texts)
        return torch.softmax(logits, -1).numpy()

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self._proba(as_texts(X))

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted-ness before classes_ is touched
        return self.classes_[proba.argmax(1)]

    def _encode(self, y: np.ndarray, param: str = "y") -> np.ndarray:
        unseen = sorted(set(y.tolist()) - set(self.classes_.tolist()), key=str)
        if unseen:
            raise ValueError(f"{param} has labels {unseen[:5]} unseen during fit; classes_ are "
                             f"{self.classes_.tolist()}; fix: drop those rows or refit with them")
        return np.searchsorted(self.classes_, y)

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy; NaN or labels unseen during fit are errors, not silent misses."""
        check_is_fitted(self, "model_")
        texts = as_texts(X)
        y = self._encode(as_labels(y, len(texts)))
        pred = self.predict_proba(texts).argmax(1)
        return float(np.average(pred == y, weights=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = True
        return tags

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> Path:
        """Write a folder: model.safetensors + config.json + tokenizer (opens with AutoModelForSequenceClassification;
        with ``pooling_ == "mean"`` its head must read the masked mean, not the model's own forward: use ``load``)
        and tunefuse.json (parameters, classes, history). Atomic: a temp folder renamed into place."""
        check_is_fitted(self, "model_")
        self.model_.config.id2label = {i: str(c) for i, c in enumerate(self.classes_)}
        self.model_.config.label2id = {str(c): i for i, c in enumerate(self.classes_)}
        self.model_.config.tunefuse_pooling = self.pooling_  # tells a reader of config.json what the head reads
        with atomic_folder(path) as tmp, quiet_transformers():
            self.model_.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer_.save_pretrained(tmp)
            write_json(tmp / "tunefuse.json", {
                "format": FORMAT, "params": self.get_params(), "classes": self.classes_.tolist(),
                "classes_dtype": self.classes_.dtype.str, "max_length": self.max_length_,
                "history": self.history_, "fit_time_s": self.fit_time_, "frozen_backbone": self.frozen_backbone_,
                "pooling": self.pooling_, "probe_l2": getattr(self, "probe_l2_", None)})
        return Path(path)

    @classmethod
    def load(cls, path, device: str = "auto") -> "Finetuner":
        """Load a folder written by ``save``; weights are read from safetensors only (never unpickled)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        meta = read_json(path / "tunefuse.json", "tunefuse Finetuner checkpoint")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}; fix: re-save it "
                             "with this version of tunefuse")
        if not (path / "model.safetensors").exists():
            raise ValueError(f"{str(path)!r} has no model.safetensors; the checkpoint is incomplete: save it again")
        params = {k: v for k, v in meta["params"].items() if k in cls._get_param_names()}  # drops retired params
        if "pooling" not in meta:  # written before pooling existed: the head read the model's own pooled output
            params["pooling"] = "native"
        est = cls(**dict(params, device=device))
        classes = np.array(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        attn = (est.config_overrides or {}).get("attn_implementation", attention_implementation(pick_device(device)))
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, trust_remote_code=est.trust_remote_code, attn_implementation=attn)
            est.tokenizer_ = AutoTokenizer.from_pretrained(path)
        if model.config.num_labels != len(classes):
            raise ValueError(f"{str(path)!r}: the head has {model.config.num_labels} outputs but tunefuse.json lists "
                             f"{len(classes)} classes; the checkpoint is mismatched: save it again")
        est.device_ = pick_device(device)
        est.precision_ = resolve_precision(est.precision, est.device_)
        est.model_ = model.to(est.device_).eval().requires_grad_(False)
        est.classes_, est.max_length_, est.history_ = classes, meta["max_length"], meta["history"]
        est.fit_time_, est.source_ = meta.get("fit_time_s", float("nan")), resolve_backbone(est.backbone)[0]
        est.frozen_backbone_ = bool(meta.get("frozen_backbone", False))
        est.pooling_ = meta.get("pooling", "native")
        if meta.get("probe_l2") is not None:
            est.probe_l2_ = meta["probe_l2"]
        return est
