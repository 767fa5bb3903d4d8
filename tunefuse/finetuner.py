"""``Finetuner``: fine-tune a pretrained backbone with a task's new head: backbone × strategy × task.

The estimator stores parameters, validates and builds in ``fit``, runs the strategy's stages through the task-blind
loop of :mod:`tunefuse.train`, predicts and saves. Everything task-specific (inputs, head, loss, decoding, metric,
fusion) lives in the task entry of :mod:`tunefuse.tasks`.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import _safe_indexing
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from . import features
from .checkpoint import atomic_folder, read_json, write_json
from .data import predict_batches, split_by_length
from .device import attention_implementation, autocast, pick_device, resolve_precision
from . import inference
from .inference import InferenceModel, fast_attention
from .packing import packed
from .loading import PooledLinear, head_module, load_pretrained, load_saved, quiet_transformers, resolve_pooling
from .probe import PROBE_L2_GRID, PROBE_L2_GRID_STANDARDIZED, fit_linear_probe, fit_standardized_probe
from .strategies import get_strategy
from .tasks import get_task
from .tasks.base import encode_labels, log_loss
from .train import LoopConfig, LoopState, linear_schedule, make_optimizer, param_groups, train_loop

FORMAT = "tunefuse.finetuner/2"
FORMATS_READ = ("tunefuse.finetuner/1", FORMAT)  # /1: sentence classification only, before tasks existed
# Per-forward fixed cost in token-equivalents, used to cut a batch into length-sorted micro-batches. Measured with
# MiniLM-L6 on 2 CPU cores (bench/finetune_speed.py, row tunefuse_micro_batches_256): at batch 16 the smaller
# matmuls cost more than the padding they save, so only large batches of very uneven lengths are split.
MICRO_BATCH_OVERHEAD = 4096
# Token embeddings train on the rows each batch touches (lazy AdamW rows, tunefuse/train.py): 1.14× a fit on
# 2 cores (bench/finetune_speed.py, row tunefuse_dense_embedding_grads); False: the dense gradient and step.
SPARSE_EMBEDDING_GRADS = True
HEAD_INIT_SEED = 0
POOLINGS = ("auto", "mean", "native")
PREDICT_TOKENS = 4096  # tokens per inference batch: big matmuls, yet in cache (bench/predict_ab.py: 2048-4096 fastest)


def _formats(template: str) -> bool:
    """True when ``template.format(text=...)`` works (no stray braces or other fields)."""
    try:
        template.format(text="")
        return True
    except (KeyError, IndexError, ValueError):
        return False


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


def _is_classifier(est) -> bool:
    return get_task(est.task).is_classifier if isinstance(est.task, str) else est.task.is_classifier


def _last_token(hidden: torch.Tensor, input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """The hidden state of each row's last non-padding token: what a decoder's sequence-classification head
    (GPT-2's, Llama's ``score``) classifies. It applies its linear head to every token and keeps that one, so the
    probe fits the head on these rows; the same rule as transformers' ``*ForSequenceClassification``."""
    if pad_token_id is None:
        return hidden[:, -1]
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    last = (positions * (input_ids != pad_token_id)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


class Finetuner(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained backbone for a task; a scikit-learn estimator (clone, bag, stack, grid-search it).

    Minimises Σ w_i·L(y_i, f(x_i)) / Σ w_i + weight decay + λ·L2-SP, with label smoothing, layer-wise lr decay and
    early stopping on a validation split that restores the best epoch. ``task``: 'text-classification' (texts ->
    labels; a classifier with ``predict_proba``), 'token-classification' (NER: word lists -> BIO tags, or raw texts ->
    entity spans), 'question-answering' (extractive QA: SQuAD examples -> answer texts), 'image-classification',
    'image-segmentation' (images -> masks), 'object-detection' (images -> boxes), 'ctr' (DataFrame rows of ids ->
    click probability; ``backbone='scratch'`` or a ``tunefuse.pretrain`` folder); see ``tunefuse.tasks``.

    >>> clf = Finetuner("minilm-l6", epochs=1, config_overrides={"num_hidden_layers": 1}, verbose=0)
    >>> clf.fit(["great dress", "awful fit", "love it", "poor quality"], [1, 0, 1, 0]).predict(["lovely"]).shape
    (1,)
    """

    def __init__(self, backbone: str = "minilm-l6", strategy: str = "full", *, task="text-classification",
                 epochs: int = 3, batch_size: int = 16, lr: float | None = None, probe_l2: float | None = None,
                 probe_standardize: bool = False,
                 weight_decay: float = 0.01, l2sp: float = 0.0, layer_decay: float = 1.0,
                 label_smoothing: float = 0.0, warmup_ratio: float = 0.06, max_grad_norm: float | None = 1.0,
                 early_stopping: bool | str = "auto", validation_fraction: float = 0.1, patience: int = 2,
                 max_length: int | None = None, template: str | None = None, lora_r: int = 8, lora_alpha: int = 16,
                 freeze_embeddings: bool = False, dropout: float | None = 0.0, pooling: str = "auto",
                 precision: str = "auto", packing: bool | str = "auto", device: str = "auto",
                 config_overrides: dict | None = None, trust_remote_code: bool = False,
                 checkpoint_dir: str | None = None, checkpoint_every_s: float = 300.0,
                 random_state: int = 0, verbose: int = 1):
        self.backbone = backbone
        self.strategy = strategy
        # A registered task name or a task entry with its options, e.g. QuestionAnswering(stride=128)
        self.task = task
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
        self.max_length = max_length  # None: the task's default (QA: 256) or the backbone's (128)
        # A format string with one "{text}" that wraps every text before tokenisation (training, validation,
        # prediction and the cached features alike). Decoders pool better features from a prompted text, e.g.
        # 'Review: "{text}"\nDid the customer like the item?'. None: the raw text. Text classification only.
        self.template = template
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.freeze_embeddings = freeze_embeddings
        # Backbone dropout (hidden and attention). 0 by default: Bernoulli masks are slow on CPU (1.9x, row
        # tunefuse_dropout_0.1 of bench/finetune_speed.py) and the short fine-tunes measured there lose no accuracy.
        # None keeps the backbone's own (0.1 for BERT); raise it for long runs on little data.
        self.dropout = dropout
        # What a sentence classifier's head reads: "mean" (attention-masked mean of the last hidden states: what
        # sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained for), "native" (the architecture's
        # own head input: BERT's pooled [CLS], a decoder's last token) or "auto" (the checkpoint's
        # sentence-transformers pooling if it declares one, else native). Token and span tasks read every token.
        self.pooling = pooling
        self.precision = precision
        # Padding-free forward passes (tunefuse/packing.py): a batch's real tokens packed into one row, attention
        # re-padded per group of similar lengths; exact, for the BERT family. "auto": on CPU, where padding costs
        # compute (on CUDA, SDPA on padded batches is fast); others run padded whatever this says.
        self.packing = packing
        self.device = device
        self.config_overrides = config_overrides  # e.g. {"num_hidden_layers": 2}: loads the first 2 pretrained layers
        self.trust_remote_code = trust_remote_code
        # A folder for the training state (weights, optimiser moments, schedule, RNG, loop counters, best epoch) of
        # an unfinished fit, saved at every epoch's end and every ``checkpoint_every_s`` seconds. A fit of the same
        # parameters on the same data finds it there after a crash or kill -9 and continues from it, to the same
        # weights as an uninterrupted fit. Kept in a sub-folder named by a hash of parameters and data (so k-fold
        # clones sharing one folder never mix), removed once the fit ends. None: no training state is written.
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every_s = checkpoint_every_s
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    @property
    def task_(self):
        """The task entry: after fit, with the options the data decided (``task_entry_``); before, from ``task``."""
        entry = self.__dict__.get("task_entry_")
        if entry is not None:
            return entry
        return get_task(self.task) if isinstance(self.task, str) else self.task

    def _check_params(self) -> None:
        get_strategy(self.strategy)
        task = self.task_
        opt = lambda check: (lambda v: v is None or check(v))  # noqa: E731
        checks = [
            ("epochs", self.epochs, lambda v: _is_int(v) and v >= 1, "an int >= 1, e.g. epochs=3"),
            ("batch_size", self.batch_size, lambda v: _is_int(v) and v >= 1, "an int >= 1, e.g. batch_size=16"),
            ("lr", self.lr, opt(lambda v: _is_num(v) and v > 0), "a float > 0 or None"),
            ("probe_l2", self.probe_l2, opt(lambda v: _is_num(v) and v >= 0), "a float >= 0 or None"),
            ("probe_standardize", self.probe_standardize, lambda v: v in (True, False), "True or False"),
            ("weight_decay", self.weight_decay, lambda v: _is_num(v) and v >= 0, "a float >= 0"),
            ("l2sp", self.l2sp, lambda v: _is_num(v) and v >= 0, "a float >= 0"),
            ("layer_decay", self.layer_decay, lambda v: _is_num(v) and 0 < v <= 1, "a float in (0, 1]"),
            ("label_smoothing", self.label_smoothing, lambda v: _is_num(v) and 0 <= v < 1, "a float in [0, 1)"),
            ("warmup_ratio", self.warmup_ratio, lambda v: _is_num(v) and 0 <= v < 1, "a float in [0, 1)"),
            ("max_grad_norm", self.max_grad_norm, opt(lambda v: _is_num(v) and v > 0), "a float > 0 or None"),
            ("validation_fraction", self.validation_fraction, lambda v: _is_num(v) and 0 < v < 1,
             "a float in (0, 1)"),
            ("patience", self.patience, lambda v: _is_int(v) and v >= 1, "an int >= 1"),
            ("early_stopping", self.early_stopping, lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
            ("dropout", self.dropout, opt(lambda v: _is_num(v) and 0 <= v < 1), "a float in [0, 1) or None"),
            ("pooling", self.pooling, lambda v: v in POOLINGS, f"one of {list(POOLINGS)}"),
            ("packing", self.packing, lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
            ("max_length", self.max_length, opt(lambda v: _is_int(v) and v >= 8), "an int >= 8 or None"),
            ("lora_r", self.lora_r, lambda v: _is_int(v) and v >= 1, "an int >= 1"),
            ("random_state", self.random_state, _is_int, "an int"),
            ("checkpoint_every_s", self.checkpoint_every_s, lambda v: _is_num(v) and v >= 0,
             "a number of seconds >= 0 (0: after every step)"),
            ("checkpoint_dir", self.checkpoint_dir, opt(lambda v: isinstance(v, (str, Path))),
             "None or a folder path"),
            ("template", self.template, opt(lambda v: isinstance(v, str) and v.count("{text}") == 1 and _formats(v)),
             "None or a str with exactly one '{text}' and no other {...} field")]
        for name, value, ok, valid in checks:
            try:
                good = bool(ok(value))
            except TypeError:
                good = False
            if not good:
                raise ValueError(f"{name}={value!r} is invalid; fix: pass {valid}")
        text_classifier = task.is_classifier and task.modality == "text"
        if not text_classifier and self.template is not None:
            raise ValueError(f"template={self.template!r} applies to text classification only; fix: pass "
                             f"template=None for task={task.name!r}")
        if get_strategy(self.strategy).probe and not getattr(task, "probe_applies", True):
            raise ValueError(f"strategy={self.strategy!r} starts with a linear probe, but task={task.name!r} has a "
                             "non-linear head (a segmentation decoder, a detector); fix: use strategy='full' or 'lora'")
        if task.modality == "tabular" and self.freeze_embeddings and self.backbone == "scratch":
            raise ValueError("freeze_embeddings=True keeps pretrained user and item embeddings fixed, but "
                             "backbone='scratch' has none; fix: pass a folder written by tunefuse.pretrain, or "
                             "freeze_embeddings=False")
        if task.modality == "tabular" and self.strategy == "lora":
            raise ValueError("strategy='lora' does not apply to task='ctr': its networks are small MLPs over "
                             "embeddings; fix: use 'full', 'head', 'lp-ft' or freeze_embeddings=True")
        if task.modality == "vision" and self.freeze_embeddings:
            raise ValueError(f"freeze_embeddings=True applies to text and CTR backbones only; fix: pass "
                             f"freeze_embeddings=False for task={task.name!r}")
        if not text_classifier and self.pooling == "mean":
            raise ValueError(f"pooling='mean' applies to text classification only: task={task.name!r} reads every "
                             "token; fix: pass pooling='auto'")
        pick_device(self.device)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, sample_weight=None, X_val=None, y_val=None):
        """Fine-tune on examples ``X`` with targets ``y``; ``X_val``/``y_val`` drive early stopping when given.
        (Extractive QA takes ``y=None``: the gold answers inside the examples.)"""
        t0 = time.perf_counter()
        self._check_params()
        from .train import join_process_group

        self._launched = join_process_group()  # torchrun / accelerate launch: data parallel inside this fit
        self.__dict__.pop("task_entry_", None)  # a refit decides the data-driven options anew
        task = self.task_
        X = task.check_X(X)
        y = task.check_y(y, X)
        labels = task.labels(y)
        self.task_entry_ = task.fitted(y)
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=float).ravel()
        if w.shape != (len(X),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"sample_weight must be {len(X)} finite non-negative numbers with a positive sum; "
                             f"got shape {w.shape}; fix: pass one weight per row, or None")
        if not getattr(task, "weighted_loss", True) and np.ptp(w) > 0:
            raise ValueError(f"sample_weight is not supported by task={task.name!r}: its loss is a mean over the "
                             "whole batch, not one loss per example; fix: pass sample_weight=None, or repeat the "
                             "images you want to weigh more")
        self._fit_examples(X, {"y": y}, labels, w, self._validation(X_val, y_val, labels))
        self._drop_training_state()
        self.fit_time_ = time.perf_counter() - t0
        return self

    def fit_soft(self, X, scores, classes=None, X_val=None, y_val=None):
        """Fit on soft targets: a teacher's fusable scores (``predict_scores``: class-probability rows over
        ``classes`` for classification, per-word tag probabilities over ``classes`` (the tag set) for NER, span
        candidates for QA). Distillation from an ensemble calls it."""
        t0 = time.perf_counter()
        self._check_params()
        self.__dict__.pop("task_entry_", None)
        task = self.task_
        X = task.check_X(X)
        labels = None if classes is None else np.asarray(classes)
        if labels is None and task.has_labels:
            raise ValueError(f"classes=None: task={task.name!r} needs the label set the scores are over; fix: pass "
                             "classes=teacher.labels_")
        val = self._validation(X_val, y_val, labels)
        self.task_entry_ = task.fitted(val[1]) if val is not None else task
        self._fit_examples(X, {"soft": scores}, labels, np.ones(len(X)), val)
        self._drop_training_state()
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _drop_training_state(self) -> None:
        """A finished fit's training state is not needed any more: remove its folder (other fits' stay). A caller
        that saves the model afterwards (a run folder) sets ``_keep_training_state`` and removes it once saved, so a
        kill in between resumes from the finished state instead of refitting."""
        from .train import barrier, data_parallel

        barrier()  # data parallel: rank 0 may still be writing the finished state
        if (self.checkpoint_dir is not None and not getattr(self, "_keep_training_state", False)
                and data_parallel()[0] == 0):
            import shutil

            shutil.rmtree(Path(self.checkpoint_dir) / self._resume_key, ignore_errors=True)

    def _validation(self, X_val, y_val, labels):
        if X_val is None:
            return None
        task = self.task_
        X_val = task.check_X(X_val, "X_val")
        y_val = task.check_y(y_val, X_val, "y_val")
        if task.is_classifier:
            encode_labels(y_val, labels, "y_val")  # an unseen label is an error here, not a silent miss later
        elif labels is not None and hasattr(task, "check_known"):
            task.check_known(y_val, labels, "y_val")
        return X_val, y_val

    def _fit_examples(self, X, target, labels, w, val) -> None:
        """Carve a validation split when early stopping needs one, then train under a private RNG."""
        task = self.task_
        stop = self.early_stopping is True or (self.early_stopping == "auto" and (self.epochs > 1 or val))
        if val is None and stop:
            if "y" not in target:
                raise ValueError("early stopping needs validation data for soft targets; fix: pass X_val and y_val, "
                                 "or early_stopping=False")
            if len(X) < 2:
                raise ValueError(f"early stopping needs a validation split, but {len(X)} example cannot be split; "
                                 "fix: pass X_val and y_val, or early_stopping=False")
            strat = None
            if task.is_classifier:
                _, inv, counts = np.unique(target["y"], return_inverse=True, return_counts=True)
                strat = inv if counts.min() >= 2 and len(X) * self.validation_fraction >= len(counts) else None
            tr, va = train_test_split(np.arange(len(X)), test_size=self.validation_fraction,
                                      random_state=self.random_state, stratify=strat)
            y = target["y"]
            pick = (lambda v, idx: v[idx]) if isinstance(y, np.ndarray) else (lambda v, idx: [v[i] for i in idx])
            val = (_safe_indexing(X, va), pick(y, va))
            X, target, w = _safe_indexing(X, tr), {"y": pick(y, tr)}, w[tr]
        self.device_ = pick_device(self.device)
        self.precision_ = self._resolve_precision()
        self._resume_key = self._fit_key(X, target, w, val) if self.checkpoint_dir is not None else None
        with torch.random.fork_rng(devices=[]):  # seeds the head init and dropout without touching the caller's RNG
            self._fit(X, target, labels, w, val, stop)

    def _fit_key(self, X, target, w, val) -> str:
        """A hash of what decides the trained weights (parameters, training rows, targets, weights, validation):
        the name of this fit's training-state folder inside ``checkpoint_dir``."""
        import hashlib

        from .fusion.members import _digest

        ignored = {"verbose", "checkpoint_dir", "checkpoint_every_s", "device"}
        params = {k: repr(v) for k, v in sorted(self.get_params(deep=False).items()) if k not in ignored}
        parts = [json.dumps(params), _digest(X), _digest(target.get("y", target.get("soft"))), _digest(w),
                 _digest(val) if val is not None else "-", str(self.device_)]
        return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]

    def _fit(self, X, target, labels, w, val, stop) -> None:
        task, strategy = self.task_, get_strategy(self.strategy)
        # Every member starts from the same head initialisation whatever its random_state, so members of one
        # backbone share one pretrained start and can be averaged in weight space (model soups need that).
        torch.manual_seed(HEAD_INIT_SEED)
        model, self.tokenizer_, default_length, self.source_ = self._pretrained(labels, X=X)
        self.max_length_ = self.max_length or getattr(task, "max_length", None) or default_length
        head_name, head = head_module(model, task.head_names)
        self.pooling_ = resolve_pooling(self.pooling, self.source_, model, head) if (
            task.is_classifier and task.modality == "text") else "native"
        torch.manual_seed(self.random_state)  # dropout masks (data order has its own seeded generator)
        self.labels_ = labels
        # inputs first: a bad file or label fails here, before any fitted attribute is replaced
        enc = self._encode(X, **target)
        val_enc = self._encode(val[0], y=val[1]) if val is not None and strategy.probe else None
        self.model_ = model.to(self.device_)
        self._inference = InferenceModel()  # no inference copy of a previous fit's model survives
        if task.is_classifier:
            self.classes_ = labels
        self.history_ = []
        # A backbone that never trains keeps predicting from the shared feature cache (see _unit_logits)
        self.frozen_backbone_ = strategy.tune is None
        w_units = torch.as_tensor(w[enc.example], dtype=torch.float32, device=self.device_)
        if strategy.probe:  # stage 1: linear probe on frozen features, computed once and shared between members
            self._probe(head, enc, w_units, val_enc)
        if strategy.tune:
            if strategy.tune == "lora":
                self.model_ = self._with_lora(self.model_)
            else:
                self.model_.requires_grad_(True)
                for name in getattr(task, "frozen_modules", lambda model: [])(self.model_):
                    self.model_.get_submodule(name).requires_grad_(False)
            if self.freeze_embeddings:
                self.model_.get_input_embeddings().requires_grad_(False)
            sparse = self._sparse_embedding()
            lengths = enc.lengths()
            pad = self.tokenizer_.pad_token_id

            def forward(batch):
                for chunk in split_by_length(lengths[batch], MICRO_BATCH_OVERHEAD):
                    rows = batch[chunk]
                    inputs, targets = task.collate(enc, rows, pad, train=True)
                    inputs = _to(inputs, self.device_)
                    with autocast(self.device_, self.precision_), packed(self.model_, self._packs()):
                        logits = task.logits(self.model_, inputs, self.pooling_)
                    yield rows, task.loss(logits, _to(targets, self.device_), self.label_smoothing)

            params = [p for p in self.model_.parameters() if p.requires_grad]
            try:
                lr = self.lr or dict(getattr(task, "default_lrs", ())).get(strategy.name) or strategy.lr
                self._stage(params, forward, len(enc), w_units, val, epochs=self.epochs, lr=lr,
                            stop=stop, stage=strategy.tune, head_name=head_name)
            finally:
                if sparse is not None:
                    sparse.sparse = False
            if strategy.tune == "lora":  # merge the adapters: checkpoints and soups then see a plain HF model
                self.model_ = self.model_.merge_and_unload()
        self.model_.eval().requires_grad_(False)
        if val is not None:  # options tuned on validation after training (QA's no-answer threshold)
            self.task_entry_ = task.calibrate(val[0], val[1], self._scores)

    def _train_mode(self, module, after_probe: bool):
        """``module.train(on)``, with BatchNorm statistics kept frozen where the task asks for it: by default after a
        probe stage (LP-FT), whose head was fitted on features normalised by the pretrained statistics. Updated
        statistics move those features under the head: MobileNetV2 LP-FT on 300 digits fell from the probe's 0.67
        validation accuracy to 0.17-0.30; with frozen statistics it keeps improving on it."""
        mode = getattr(self.task_, "batchnorm", "train")
        frozen = mode == "frozen" or (mode == "auto" and after_probe)
        norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if frozen else []

        def train_mode(on: bool) -> None:
            module.train(on)
            for m in norms:
                m.eval()

        return train_mode

    def _resolve_precision(self) -> str:
        """``precision`` on ``device_``; 'auto' is fp32 for CNNs on CPU. bf16 autocast trains MobileNetV2 at 64 px
        1.6-2.4x slower than fp32 channels-last on a 2-core AMX Xeon (bench/results/tasks_vision*.txt, the plain
        loop's settings), and bf16 inference, 1.2-1.7x faster, flips 1-4 % of MobileNetV2's test predictions and
        31 % of an EfficientNet-Lite0's (0.922 fp32 -> 0.689 bf16 accuracy): errors add up through BatchNorm and
        depthwise layers as they do not through a 6-layer transformer."""
        if self.task_.modality == "tabular" and self.precision == "auto" and self.device_.type == "cpu":
            return "fp32"  # embedding lookups and small MLPs: bf16 saves nothing on CPU and rounds the embeddings
        if self.task_.modality == "vision" and self.precision == "auto" and (
                self.device_.type == "cpu" or not getattr(self.task_, "bf16_safe", True)):
            return "fp32"
        return resolve_precision(self.precision, self.device_)

    def _sparse_embedding(self) -> torch.nn.Embedding | None:
        """The token embedding switched to sparse gradients, so the optimiser steps only the rows a batch touched
        (``train.AdamW``); None where it does not train, is tied to an output layer or L2-SP needs it dense."""
        emb = self.model_.get_input_embeddings() if hasattr(self.model_, "get_input_embeddings") else None
        if not SPARSE_EMBEDDING_GRADS or not isinstance(emb, torch.nn.Embedding) or not emb.weight.requires_grad \
                or self.l2sp > 0 or getattr(self, "_launched", False):
            return None  # launched by torchrun: gradients are all-reduced dense (train.all_reduce_gradients)
        if sum(p is emb.weight for _, p in self.model_.named_parameters(remove_duplicate=False)) > 1:
            return None  # tied input and output embeddings: the output layer's gradient is dense anyway
        emb.sparse = True
        return emb

    def _packs(self) -> bool:
        return self.packing is True or (self.packing == "auto" and self.device_.type == "cpu")

    def _pretrained(self, labels, device=None, X=None):
        task = self.task_
        if task.modality == "tabular":  # vocabularies come from the training rows X, or the fitted encoder
            from .ctr.models import load_pretrained as load_ctr

            return load_ctr(self.backbone, task, X, dropout=self.dropout, config_overrides=self.config_overrides,
                            device=device or pick_device(self.device),
                            encoder=None if X is not None else getattr(self, "tokenizer_", None))
        if task.modality == "vision":
            from .vision.models import load_pretrained as load_vision

            return load_vision(self.backbone, num_labels=len(labels), dropout=self.dropout,
                               config_overrides=self.config_overrides, device=device or self.device_,
                               image_size=getattr(task, "input_size", None) or getattr(task, "image_size", None),
                               model=task.vision_model, head=getattr(task, "head_options", dict)())
        id2label = None if labels is None else {i: str(c) for i, c in enumerate(labels)}
        return load_pretrained(self.backbone, task.auto_model, num_labels=None if labels is None else len(labels),
                               id2label=id2label, dropout=self.dropout, config_overrides=self.config_overrides,
                               trust_remote_code=self.trust_remote_code, device=device or self.device_)

    def _encode(self, X, *, y=None, soft=None):
        return self.task_.encode(self.tokenizer_, X, self.max_length_, labels=self.labels_, y=y, soft=soft,
                                 **({"template": self.template} if self.task_.modality == "text" and
                                    self.task_.is_classifier else {}))

    def _probe(self, head, enc, w_units, val_enc) -> None:
        """Fit the head on cached frozen features by L-BFGS; the L2 strength is picked by validation loss."""
        if not isinstance(head, torch.nn.Linear):
            raise ValueError(f"strategy={self.strategy!r} needs a linear head; {type(head).__name__} is not one; "
                             "fix: use strategy='full' or 'lora', or pooling='mean'")
        task = self.task_
        x, unit_loss = task.probe_problem(self._unit_features(enc), enc)
        x = x.to(self.device_)
        default_grid = PROBE_L2_GRID_STANDARDIZED if self.probe_standardize else PROBE_L2_GRID
        grid = [self.probe_l2] if self.probe_l2 is not None else (list(default_grid) if val_enc is not None else
                                                                   [1.0 / len(enc)])  # sklearn's default C=1
        fit = fit_standardized_probe if self.probe_standardize else fit_linear_probe
        init = {k: v.clone() for k, v in head.state_dict().items()}
        val_x, val_loss = task.probe_problem(self._unit_features(val_enc), val_enc) if val_enc is not None else (
            None, None)
        fits = []  # (validation loss, l2, head weights) per grid point
        for i, l2 in enumerate(grid):
            head.load_state_dict(init)
            t0 = time.perf_counter()
            record = {"epoch": i + 1, "stage": "probe", "l2": l2,
                      "train_loss": fit(head, x, unit_loss, w_units, l2, self.label_smoothing)}
            if val_x is not None:
                with torch.inference_mode():
                    out = head(val_x.to(self.device_)).float()
                    record["val_loss"] = float(val_loss(out, 0.0).mean())
                    if hasattr(task, "scores_metric"):  # CTR: AUC, as the later stages record
                        record["val_score"] = task.scores_metric(val_enc.targets.numpy(),
                                                                 torch.softmax(out, -1).cpu().numpy())
                    elif task.is_classifier:  # accuracy of the probe, for the history
                        record["val_score"] = float((out.argmax(-1).cpu() == val_enc.targets).float().mean())
            record["time_s"] = time.perf_counter() - t0
            self.history_.append(record)
            fits.append((record.get("val_loss", 0.0), l2, {k: v.clone() for k, v in head.state_dict().items()}))
        _, self.probe_l2_, weights = min(fits, key=lambda f: f[0])  # the first of equal losses
        head.load_state_dict(weights)

    def _stage(self, params, forward, n, w_units, val, *, epochs, lr, stop, stage, head_name) -> None:
        """Run one training stage (full or LoRA) through the shared loop."""
        module = self.model_
        groups = param_groups(module, lr, self.weight_decay, self.layer_decay,
                              head_names=(head_name, "modules_to_save"))
        optimizer = make_optimizer(groups)
        scheduler = linear_schedule(optimizer, epochs * -(-n // self.batch_size), self.warmup_ratio)
        cfg = LoopConfig(epochs=epochs, batch_size=self.batch_size, max_grad_norm=self.max_grad_norm, l2sp=self.l2sp,
                         patience=self.patience if stop else None, seed=self.random_state)
        anchor = None
        if self.l2sp > 0:  # L2-SP anchors the pretrained backbone; the new head modules have no anchor
            base = module.get_base_model() if hasattr(module, "get_base_model") else module
            head_ids = {id(p) for n in self.task_.head_names if isinstance(getattr(base, n, None), torch.nn.Module)
                        for p in getattr(base, n).parameters()}
            anchor = {id(p): p.detach().clone() for p in params if id(p) not in head_ids}
        trainable = [(k, p) for k, p in module.named_parameters() if p.requires_grad]

        def evaluate() -> dict:
            return self._evaluate(*val)

        def snapshot() -> dict:
            return {k: p.detach().clone() for k, p in trainable}

        state, on_step_end = self._resumed_state(module, optimizer, scheduler, stage, -(-n // self.batch_size))
        state = train_loop(forward, n, w_units, params, optimizer, scheduler, cfg, state,
                           evaluate=evaluate if val is not None else None, snapshot=snapshot, anchor=anchor,
                           on_step_end=on_step_end, on_epoch_end=getattr(self, "_on_epoch_end", None),
                           train_mode=self._train_mode(module, get_strategy(self.strategy).probe),
                           verbose=self.verbose > 0, buffers=list(module.buffers()))
        if on_step_end is not None:  # the finished loop: a kill from here on resumes past it
            on_step_end(state, force=True)
        if state.best and state.best_epoch < state.epoch:  # restore the best epoch's weights (early stopping)
            with torch.no_grad():
                for k, p in trainable:
                    p.copy_(state.best[k])
        state.best = {}
        self.history_ += [dict(r, stage=stage) for r in state.history]
        self.loop_state_ = state
        module.eval()

    def _resumed_state(self, module, optimizer, scheduler, stage: str, steps_per_epoch: int):
        """The loop state to start from (a saved one of this very fit, restored into ``module``, the optimiser and
        the schedule, or a fresh one) and the step hook that saves it; (LoopState(), None) without
        ``checkpoint_dir``."""
        if self.checkpoint_dir is None:
            return LoopState(), None
        from .train import resumable

        return resumable(Path(self.checkpoint_dir) / self._resume_key / f"stage-{stage}", module, optimizer,
                         scheduler, steps_per_epoch, self.checkpoint_every_s, f"{stage} training", self.verbose)

    def _evaluate(self, X_val, y_val) -> dict:
        """Validation metric (``val_score``, higher is better) and, for classifiers, log-loss (``val_loss``)."""
        task = self.task_
        scores = self._scores(X_val)
        out = {"val_score": task.scores_metric(y_val, scores) if hasattr(task, "scores_metric") else
               task.metric(y_val, task.decode(X_val, scores, self.labels_))}
        if task.is_classifier:
            out["val_loss"] = log_loss(scores, encode_labels(y_val, self.labels_, "y_val"))
        return out

    def _with_lora(self, model):
        from peft import LoraConfig, TaskType, get_peft_model

        if self.task_.modality == "vision":  # peft adapts any torch module: name the layers, keep the head trainable
            from .vision.models import lora_targets

            return get_peft_model(model, LoraConfig(target_modules=lora_targets(model), r=self.lora_r,
                                                    lora_alpha=self.lora_alpha, lora_dropout=0.0,
                                                    modules_to_save=list(self.task_.head_names)))
        try:
            return get_peft_model(model, LoraConfig(task_type=getattr(TaskType, self.task_.peft_task_type),
                                                    r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.1))
        except ValueError as e:
            raise ValueError(f"LoRA cannot pick target modules for {type(model).__name__} ({e}); fix: use "
                             "strategy='full' or a backbone peft knows (BERT, RoBERTa, GPT-2, Llama)") from e

    # ------------------------------------------------------------------ inference
    def _unit_features(self, enc) -> list[np.ndarray]:
        """Head inputs of the frozen pretrained backbone per unit, cached per token sequence and shared by every
        member with the same backbone (a bag of head-only members pays for one backbone pass, not one per member)."""
        key = (self.source_, json.dumps(self.config_overrides or {}, sort_keys=True), self.max_length_,
               self.precision_, self.pooling_, self.task_.name)
        units = enc.keys if enc.keys is not None else [np.asarray(ids, dtype=np.int32).tobytes() + b"|" + np.asarray(
            enc.extra.get("type_ids", [[]] * len(enc))[u], dtype=np.int8).tobytes() for u, ids in enumerate(enc.ids)]
        where = {k: u for u, k in enumerate(units)}
        return features.cached(key, units, lambda missing: self._head_inputs(enc, [where[k] for k in missing]))

    def _head_inputs(self, enc, rows: list[int]) -> list[np.ndarray]:
        model = self._inference_model()
        head = head_module(model, self.task_.head_names)[1]
        captured: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        try:  # the hook sees the head's input batch by batch
            def head_input(model, inputs: dict) -> torch.Tensor:
                self.task_.logits(model, inputs, self.pooling_)
                x = captured.pop()
                if x.ndim == 3 and self.task_.name == "text-classification":  # a head that reads one token
                    x = x[:, 0] if isinstance(head, PooledLinear) else _last_token(
                        x, inputs["input_ids"], model.config.pad_token_id)
                return x

            return self._forward_units(enc, head_input, rows, model=model)
        finally:
            hook.remove()

    def _inference_model(self) -> torch.nn.Module:
        """The model that predicts: ``model_`` itself, or its bf16 copy where precision is bf16 (tunefuse.inference)."""
        if getattr(self, "_inference", None) is None:
            self._inference = InferenceModel()
        self.model_.eval()
        return self._inference.get(self.model_, self.precision_)

    def _forward_units(self, enc, fn, rows=None, model=None) -> list[np.ndarray]:
        """``fn(model, inputs)`` over length-sorted batches (little padding); one (positions, dims) array per unit, in
        the order of ``rows`` (default: every unit). A per-text output counts as one position."""
        model = self._inference_model() if model is None else model
        rows = np.arange(len(enc)) if rows is None else np.asarray(rows)
        lengths = enc.lengths()[rows]
        out: list = [None] * len(rows)
        with torch.inference_mode(), autocast(self.device_, self.precision_), fast_attention(model), \
                packed(model, inference.PACKED and self._packs()):
            for batch in predict_batches(lengths, PREDICT_TOKENS):
                inputs, _ = self.task_.collate(enc, rows[batch], self.tokenizer_.pad_token_id)
                res = fn(model, _to(inputs, self.device_))
                if isinstance(res, list):  # one variable-size output per unit (a detector's boxes)
                    for j, i in enumerate(batch):
                        out[i] = res[j].float().cpu().numpy()
                    continue
                res = res.float().cpu().numpy()
                for j, i in enumerate(batch):
                    # per example (n, classes); per token (n, tokens, classes); per pixel (n, classes, H, W)
                    out[i] = res[j][None] if res.ndim == 2 else res[j, : lengths[i]] if res.ndim == 3 else res[j]
        return out

    def _unit_logits(self, enc) -> list[np.ndarray]:
        if self.frozen_backbone_:  # the backbone is the pretrained one: reuse the shared feature cache
            feats = self._unit_features(enc)
            head = head_module(self.model_, self.task_.head_names)[1]
            with torch.inference_mode():
                flat = head(torch.as_tensor(np.concatenate(feats), device=self.device_)).float().cpu().numpy()
            return np.split(flat, np.cumsum([len(f) for f in feats])[:-1])
        return self._forward_units(enc, lambda model, inputs: self.task_.logits(model, inputs, self.pooling_))

    def _scores(self, X) -> list | np.ndarray:
        enc = self._encode(X)
        return self.task_.scores(X, enc, self._unit_logits(enc), self.labels_)

    def predict_scores(self, X):
        """The fusable output of each example: class probabilities (classification), per-word tag probabilities
        (NER), answer-span candidates with probabilities (QA). Output-space fusion averages these."""
        check_is_fitted(self, "model_")
        return self._scores(self.task_.check_X(X))

    @available_if(_is_classifier)
    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self._scores(self.task_.check_X(X))

    def predict(self, X):
        """Labels (classification), one BIO tag per word or entity spans of raw texts (NER), answer texts (QA)."""
        check_is_fitted(self, "model_")
        X = self.task_.check_X(X)
        pred = self.task_.decode(X, self._scores(X), self.labels_)
        return pred

    def score(self, X, y=None, sample_weight=None) -> float:
        """The task's metric: accuracy, entity F1 (seqeval, micro) or SQuAD F1; labels unseen during fit are errors."""
        check_is_fitted(self, "model_")
        task = self.task_
        X = task.check_X(X)
        y = task.check_y(y, X)
        if hasattr(task, "scores_metric"):  # CTR: AUC of the click probabilities
            return task.scores_metric(y, self._scores(X), sample_weight)
        if task.is_classifier:
            y_idx = encode_labels(y, self.labels_)
            return float(np.average(self._scores(X).argmax(1) == y_idx, weights=sample_weight))
        if hasattr(task, "check_known"):  # labels the model never saw are an error, not a silent zero IoU
            task.check_known(y, self.labels_)
        return task.metric(y, self.predict(X))

    def features(self, X) -> np.ndarray | list[np.ndarray]:
        """Frozen-backbone head inputs of ``X`` (one vector per text; per token for token and span tasks): what the
        probe fits on. Cached per backbone and shared by members."""
        check_is_fitted(self, "model_")
        if not getattr(self.task_, "probe_applies", True):
            raise ValueError(f"features() returns a linear head's inputs; task={self.task_.name!r} has no linear "
                             "head (a segmentation decoder, a detector); fix: use model_.backbone(pixels) for its "
                             "feature maps")
        feats = self._unit_features(self._encode(self.task_.check_X(X)))
        return np.concatenate(feats) if self.task_.is_classifier else feats

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = True
        if not _is_classifier(self):  # sklearn's meta-estimators then refuse it rather than misuse it
            tags.estimator_type = None
            tags.classifier_tags = None
        return tags

    # ------------------------------------------------------------------ weights
    def pretrained_model(self) -> torch.nn.Module:
        """A fresh copy of the pretrained backbone with this task's head freshly initialised (θ0 of the fine-tune)."""
        labels = getattr(self, "labels_", None)
        if labels is None and self.task_.has_labels:
            labels = np.array([0, 1])  # unfitted: a two-class head (its weights are new either way)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_INIT_SEED)
            return self._pretrained(labels, device=pick_device(self.device))[0]

    def with_weights(self, state: dict[str, torch.Tensor], *, frozen_backbone: bool = False) -> "Finetuner":
        """A copy of this fitted model carrying the weights ``state`` (a soup, a merge). ``frozen_backbone``: the
        backbone in ``state`` is the pretrained one, so cached frozen features stay valid for it."""
        import copy

        check_is_fitted(self, "model_")
        model, self.model_ = self.model_, None  # do not deep-copy the weights only to overwrite them
        try:
            out = copy.deepcopy(self)
        finally:
            self.model_ = model
        out.model_ = copy.deepcopy(model)
        out.model_.load_state_dict(state)
        out.frozen_backbone_ = bool(frozen_backbone)
        return out

    def recalibrate_batchnorm(self, X) -> int:
        """Re-estimate the BatchNorm running statistics on inputs ``X`` (no labels): what a weight-space merge of
        BatchNorm models needs, since averaged statistics do not describe averaged weights. Returns the number of
        BatchNorm layers re-estimated: 0 for transformers, for a pretrained frozen backbone, and for a task that
        trains with frozen statistics (a detector's ``batchnorm="frozen"``: its weights were tuned to ImageNet's)."""
        from .vision.models import recalibrate_batchnorm

        check_is_fitted(self, "model_")
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model_.modules())
        if self.frozen_backbone_ or getattr(self.task_, "batchnorm", None) == "frozen" or not has_bn:
            return 0
        enc = self._encode(self.task_.check_X(X))
        batches = predict_batches(enc.lengths(), PREDICT_TOKENS)

        def inputs():
            for rows in batches:
                yield _to(self.task_.collate(enc, rows, 0)[0], self.device_)

        n = recalibrate_batchnorm(self.model_, inputs())
        self._inference = InferenceModel()  # the bf16 copy holds the old statistics
        self.model_.eval()
        return n

    # ------------------------------------------------------------------ checkpoints
    @staticmethod
    def _record(entry) -> dict:
        fields = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
        return {"name": entry.name, "options": {k: v for k, v in fields.items() if k != "name"}}

    @staticmethod
    def _entry(record: dict):
        entry = get_task(record["name"])
        names = {f.name for f in dataclasses.fields(entry)}
        deep = lambda v: tuple(deep(x) for x in v) if isinstance(v, list) else v  # noqa: E731 (JSON lists -> tuples)
        options = {k: deep(v) for k, v in record.get("options", {}).items() if k in names}
        return dataclasses.replace(entry, **options)

    def _task_record(self) -> dict:
        return self._record(self.task_)

    def save(self, path) -> Path:
        """Write a folder: model.safetensors + config.json (``id2label`` filled) + tokenizer and tunefuse.json
        (parameters, task, labels, history). It opens with the task's ``AutoModelFor*`` class too (a sentence
        classifier with ``pooling_ == "mean"`` must feed its head the masked mean: use ``load``). Atomic: a temp
        folder renamed into place. Self-contained: loading never needs the backbone's package."""
        check_is_fitted(self, "model_")
        if self.labels_ is not None:
            self.model_.config.id2label = {i: str(c) for i, c in enumerate(self.labels_)}
            self.model_.config.label2id = {str(c): i for i, c in enumerate(self.labels_)}
        self.model_.config.tunefuse_pooling = self.pooling_  # tells a reader of config.json what the head reads
        self.model_.config.tunefuse_task = self.task_.name
        # the task as the user gave it (a name, or an entry with options), and the fitted entry separately
        params = dict(self.get_params(), task=self.task if isinstance(self.task, str) else self._record(self.task))
        labels = None if self.labels_ is None else np.asarray(self.labels_)
        with atomic_folder(path) as tmp, quiet_transformers():
            self.model_.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer_.save_pretrained(tmp)
            write_json(tmp / "tunefuse.json", {
                "format": FORMAT, "params": params, "task": self._task_record(),
                "labels": None if labels is None else labels.tolist(),
                "labels_dtype": None if labels is None else labels.dtype.str, "max_length": self.max_length_,
                "history": self.history_, "fit_time_s": self.fit_time_, "frozen_backbone": self.frozen_backbone_,
                "pooling": self.pooling_, "probe_l2": getattr(self, "probe_l2_", None), "source": str(self.source_)})
        return Path(path)

    @classmethod
    def load(cls, path, device: str = "auto", task: str | None = None,
             trust_remote_code: bool = False) -> "Finetuner":
        """Load a folder written by ``save``: safetensors only (never unpickled), without the backbone's package.
        ``task``: the task you expect; a checkpoint of another task is then an error, not a silent mis-read."""
        path = Path(path)
        meta = read_json(path / "tunefuse.json", "tunefuse Finetuner checkpoint")
        if meta.get("format") not in FORMATS_READ:
            raise ValueError(f"{str(path)!r} has format {meta.get('format')!r}, expected one of {list(FORMATS_READ)}; "
                             "fix: re-save it with this version of tunefuse")
        if not (path / "model.safetensors").exists():
            raise ValueError(f"{str(path)!r} has no model.safetensors; the checkpoint is incomplete: save it again")
        entry = cls._entry(meta.get("task") or {"name": "text-classification"})  # /1: classification only
        if task is not None and get_task(task).name != entry.name:
            raise ValueError(f"{str(path)!r} holds a {entry.name!r} model, not {get_task(task).name!r}; fix: load "
                             f"it with task={entry.name!r} (or None), or point at a {get_task(task).name} checkpoint")
        params = {k: v for k, v in meta["params"].items() if k in cls._get_param_names()}  # drops retired params
        # a checkpoint never turns remote code on by itself: the person loading it decides (trust_remote_code=)
        params["trust_remote_code"] = bool(trust_remote_code)
        if "pooling" not in meta:  # written before pooling existed: the head read the model's own pooled output
            params["pooling"] = "native"
        if isinstance(params.get("task"), dict):
            params["task"] = cls._entry(params["task"])
        est = cls(**dict(params, device=device))
        est.task_entry_ = entry
        raw = meta["labels"] if "labels" in meta else meta["classes"]
        dtype = meta.get("labels_dtype", meta.get("classes_dtype"))
        labels = None if raw is None else np.array(raw, dtype=np.dtype(dtype))
        if entry.modality == "vision":
            from .vision.models import load_saved as load_vision

            model, est.tokenizer_ = load_vision(path)
        elif entry.modality == "tabular":
            from .ctr.models import load_saved as load_ctr

            model, est.tokenizer_ = load_ctr(path)
        else:
            attn = (est.config_overrides or {}).get("attn_implementation",
                                                    attention_implementation(pick_device(device)))
            model, est.tokenizer_ = load_saved(path, entry.auto_model, attn_implementation=attn,
                                               trust_remote_code=est.trust_remote_code)
        if labels is not None and model.config.num_labels != len(labels):
            raise ValueError(f"{str(path)!r}: the head has {model.config.num_labels} outputs but tunefuse.json lists "
                             f"{len(labels)} labels; the checkpoint is mismatched: save it again")
        est.device_ = pick_device(device)
        est.precision_ = est._resolve_precision()
        est.model_ = model.to(est.device_).eval().requires_grad_(False)
        est.labels_, est.max_length_, est.history_ = labels, meta["max_length"], meta["history"]
        if entry.is_classifier:
            est.classes_ = labels
        est.fit_time_ = meta.get("fit_time_s", float("nan"))
        # the feature-cache key of the backbone this model was fitted from; never looked up again in the registry
        est.source_ = meta.get("source", est.backbone)
        est.frozen_backbone_ = bool(meta.get("frozen_backbone", False))
        est.pooling_ = meta.get("pooling", "native")
        if meta.get("probe_l2") is not None:
            est.probe_l2_ = meta["probe_l2"]
        return est


def _to(value, device):
    """Tensors moved to ``device``, inside dicts and lists too (a detector's targets are a list of dicts)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to(v, device) for v in value]
    return value.to(device)
