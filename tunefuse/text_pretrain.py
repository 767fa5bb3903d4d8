"""Continued pretraining of a text backbone on unlabelled in-domain texts (Gururangan et al., 2020, "Don't Stop
Pretraining": domain-adaptive pretraining), through the same loop, precision, checkpoints and resume as fine-tuning.

Objectives: masked-language modelling for encoders (BERT's rule: 15 % of the tokens chosen, of which 80 % become
[MASK], 10 % a random token, 10 % stay; Devlin et al., 2019) and causal-LM for decoders (GPT-2, Llama, SmolLM2).
The masks are drawn from a generator seeded by (seed, step), so a resumed run masks the same tokens as an
uninterrupted one (transformers' ``DataCollatorForLanguageModeling`` draws from the global RNG, which a resume
cannot replay: this is why the masking is written here). Held-out texts give a per-epoch validation loss (fixed
masks); the best epoch is kept. The result is a backbone folder (``save_pretrained`` weights, tokenizer,
sentence-transformers pooling config when the source had one, ``pretrain.json``) that ``Finetuner(folder)`` takes.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_folder, write_json
from .device import autocast, pick_device, resolve_precision
from .train import LoopConfig, LoopState, linear_schedule, make_optimizer, param_groups, resumable, train_loop

FORMAT = "tunefuse.text.pretrained/1"
OBJECTIVES = ("auto", "mlm", "clm")


def _texts(X, param: str) -> list[str]:
    if hasattr(X, "iloc"):
        X = X.iloc[:, 0] if getattr(X, "ndim", 1) == 2 else X
        X = X.tolist()
    if isinstance(X, str) or not hasattr(X, "__len__"):
        raise ValueError(f"{param} must be a list of texts (or a one-column DataFrame); got {type(X).__name__}; "
                         "fix: pass e.g. df['text'].tolist()")
    texts = [t for t in X if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"{param} holds no non-empty text ({len(X)} items); fix: pass the unlabelled texts")
    return texts


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, special: torch.Tensor, tokenizer, generator,
                probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a padded batch: (inputs, labels), labels -100 where no token was chosen. Every row gets at
    least one chosen token, so every example has a loss."""
    eligible = attention.bool() & ~special
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & eligible
    none = ~chosen.any(1) & eligible.any(1)
    if none.any():  # a short text that drew no token: choose its first eligible one
        first = eligible.float().argmax(1)
        chosen[none, first[none]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(len(tokenizer), ids.shape, generator=generator)[swap]
    return inputs, labels


def pretrain_text(texts, *, backbone, out, texts_val=None, objective: str = "auto", epochs: int = 1,
                  batch_size: int = 32, lr: float = 5e-5, weight_decay: float = 0.01, warmup_ratio: float = 0.06,
                  mlm_probability: float = 0.15, max_length: int = 128, precision: str = "auto",
                  config_overrides: dict | None = None, checkpoint_dir=None, checkpoint_every_s: float = 300.0,
                  trust_remote_code: bool = False, random_state: int = 0, verbose: int = 1) -> Path:
    """Continue ``backbone``'s pretraining on ``texts`` and write the backbone folder ``out``."""
    from transformers import AutoConfig

    from .backbones import resolve_backbone

    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}; fix: 'mlm' for encoders, 'clm' for "
                         "decoders, or 'auto'")
    for name, value, ok, valid in (("epochs", epochs, isinstance(epochs, int) and epochs >= 1, "an int >= 1"),
                                   ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1,
                                    "an int >= 1"),
                                   ("mlm_probability", mlm_probability, 0 < mlm_probability < 1, "in (0, 1)"),
                                   ("lr", lr, lr > 0, "a positive number")):
        if not ok:
            raise ValueError(f"{name}={value!r} is invalid; fix: pass {valid}")
    texts = _texts(texts, "texts")
    val = _texts(texts_val, "texts_val") if texts_val is not None else None
    source, entry = resolve_backbone(backbone)
    if objective == "auto":
        if entry is not None:
            objective = "clm" if entry.modality == "decoder" else "mlm"
        else:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CLM
            from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as MLM

            archs = config.architectures or []  # GPT2LMHeadModel, LlamaForCausalLM; BERT has both mappings
            causal = getattr(config, "is_decoder", False) or any("CausalLM" in a or "LMHeadModel" in a for a in archs) \
                or (config.model_type in CLM and config.model_type not in MLM)
            objective = "clm" if causal else "mlm"
    device = pick_device("auto")
    precision = resolve_precision(precision, device)
    with torch.random.fork_rng(devices=[]):  # the LM head's init and dropout, without touching the caller's RNG
        torch.manual_seed(random_state)
        return _pretrain(texts, val, backbone, out, objective, epochs, batch_size, lr, weight_decay, warmup_ratio,
                         mlm_probability, max_length, precision, device, config_overrides, checkpoint_dir,
                         checkpoint_every_s, trust_remote_code, random_state, verbose, t0)


def _pretrain(texts, val, backbone, out, objective, epochs, batch_size, lr, weight_decay, warmup_ratio,
              mlm_probability, max_length, precision, device, config_overrides, checkpoint_dir, checkpoint_every_s,
              trust_remote_code, random_state, verbose, t0) -> Path:
    from .loading import load_pretrained

    model, tok, _, source = load_pretrained(
        backbone, "AutoModelForMaskedLM" if objective == "mlm" else "AutoModelForCausalLM", num_labels=None,
        dropout=None, config_overrides=config_overrides, trust_remote_code=trust_remote_code, device=device)
    if objective == "mlm" and tok.mask_token_id is None:
        raise ValueError(f"backbone={backbone!r} has no [MASK] token, so it cannot be pretrained by masked-language "
                         "modelling; fix: objective='clm' (a decoder)")
    tok.padding_side = "right"  # Llama tokenizers pad on the left; shifted labels and positions assume the right
    model.to(device).train()
    # BERT's and MPNet's/RoBERTa's MLM heads: applied to the chosen tokens only (15 % of the positions), which saves
    # most of the vocabulary projection; other architectures run the whole forward
    lm_head = (getattr(model, "cls", None) or getattr(model, "lm_head", None)) if objective == "mlm" else None
    enc = tok(texts, truncation=True, max_length=max_length)
    val_enc = tok(val, truncation=True, max_length=max_length) if val else None

    def batch_tensors(e, rows):
        feats = [{k: e[k][i] for k in ("input_ids", "attention_mask")} for i in rows]
        b = tok.pad(feats, return_tensors="pt")
        special = torch.tensor([tok.get_special_tokens_mask(ids, already_has_special_tokens=True)
                                for ids in b["input_ids"].tolist()], dtype=torch.bool)
        return b["input_ids"], b["attention_mask"], special

    def unit_loss(e, rows, generator) -> torch.Tensor:
        ids, att, special = batch_tensors(e, rows)
        if objective == "mlm":
            inputs, labels = mask_tokens(ids, att, special, tok, generator, mlm_probability)
        else:  # next-token prediction; padding is not predicted
            inputs, labels = ids, torch.where(att.bool(), ids, torch.full_like(ids, -100))
        labels = labels.to(device)
        with autocast(device, precision):
            if objective == "mlm" and lm_head is not None:  # the vocabulary projection of the chosen tokens only
                hidden = model.base_model(input_ids=inputs.to(device), attention_mask=att.to(device))[0]
                where = labels != -100
                logits = lm_head(hidden[where]).float()
                tok_loss = torch.zeros(labels.shape, device=device)
                tok_loss[where] = torch.nn.functional.cross_entropy(logits, labels[where], reduction="none")
            else:
                logits = model(input_ids=inputs.to(device), attention_mask=att.to(device)).logits.float()
                if objective == "clm":
                    logits, labels = logits[:, :-1], labels[:, 1:]
                tok_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                             reduction="none", ignore_index=-100).view(labels.shape)
        counted = (labels != -100).sum(1).clamp(min=1)
        return tok_loss.sum(1) / counted  # one loss an example: the mean over its predicted tokens

    n = len(texts)
    steps_per_epoch = math.ceil(n / batch_size)
    step_seed = [0]

    def forward(batch):
        g = torch.Generator().manual_seed(random_state * 1_000_003 + step_seed[0])
        yield batch, unit_loss(enc, batch, g)

    def evaluate() -> dict:
        model.eval()
        losses = []
        with torch.no_grad():
            for s in range(0, len(val), batch_size):
                g = torch.Generator().manual_seed(10_007 + s)  # the same masks every epoch
                losses.append(unit_loss(val_enc, np.arange(s, min(s + batch_size, len(val))), g))
        model.train()
        loss = float(torch.cat(losses).mean())
        return {"val_score": -loss, "val_loss": loss, "val_perplexity": float(np.exp(min(loss, 50)))}

    groups = param_groups(model, lr, weight_decay)
    optimizer = make_optimizer(groups)
    scheduler = linear_schedule(optimizer, epochs * steps_per_epoch, warmup_ratio)
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    state, save_state, folder = LoopState(), None, None
    if checkpoint_dir is not None:  # resume: a folder named by what decides the weights
        key = hashlib.sha1(json.dumps([str(backbone), objective, epochs, batch_size, lr, weight_decay, warmup_ratio,
                                       mlm_probability, max_length, precision, config_overrides, random_state,
                                       hashlib.sha1("\x1f".join(texts).encode()).hexdigest(),
                                       hashlib.sha1("\x1f".join(val or []).encode()).hexdigest()],
                                      default=str).encode()).hexdigest()[:16]
        folder = Path(checkpoint_dir) / f"pretrain-{key}"
        state, save_state = resumable(folder, model, optimizer, scheduler, steps_per_epoch, checkpoint_every_s,
                                      "pretraining", verbose > 0)

    def on_step_end(st: LoopState) -> None:
        step_seed[0] = st.step  # the next batch's masks
        if save_state is not None:
            save_state(st)

    step_seed[0] = state.step
    state = train_loop(forward, n, torch.ones(n), [p for _, p in trainable], optimizer, scheduler,
                       LoopConfig(epochs=epochs, batch_size=batch_size, max_grad_norm=1.0, seed=random_state),
                       state, evaluate=evaluate if val else None,
                       snapshot=lambda: {k: p.detach().clone() for k, p in trainable},
                       on_step_end=on_step_end, train_mode=model.train, verbose=verbose > 0)
    if state.best and state.best_epoch < state.epoch:
        with torch.no_grad():
            for k, p in trainable:
                p.copy_(state.best[k])
    model.eval()
    meta = {"format": FORMAT, "backbone": str(backbone), "objective": objective, "texts": n,
            "validation_texts": len(val or []), "epochs": epochs, "best_epoch": state.best_epoch,
            "history": state.history, "precision": precision, "fit_time_s": time.perf_counter() - t0}
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        pooling = Path(source) / "1_Pooling"
        if pooling.is_dir():  # keep the sentence-transformers mean pooling the fine-tune reads
            shutil.copytree(pooling, tmp / "1_Pooling")
        write_json(tmp / "pretrain.json", meta)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    return Path(out)
