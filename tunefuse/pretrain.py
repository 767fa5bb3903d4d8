"""``pretrain``: continue (or start) a backbone's pretraining on unlabelled in-domain data, one entry point for
every modality: CTR networks on interaction logs (tunefuse/ctr/pretrain.py), text encoders by masked-language
modelling and decoders by causal-LM on unlabelled texts (tunefuse/text_pretrain.py)."""
from __future__ import annotations

from pathlib import Path

from .tasks import get_task


def pretrain(X, *, task="ctr", out, X_val=None, **options) -> Path:
    """Pretrain on unlabelled rows ``X`` and write a backbone folder to ``out`` that ``Finetuner(out, task=...)``
    fine-tunes. ``task='ctr'``: ``X`` is the interaction log (user, item, history; attributes are ignored),
    ``X_val`` held-out interactions for HR@10/NDCG@10 per epoch; ``options``: epochs, negatives, batch_size, lr,
    weight_decay, config_overrides (the architecture), random_state, verbose. A text task (sentence
    classification, NER, QA: they share the encoder): ``X`` unlabelled texts, ``X_val`` held-out texts for the
    per-epoch validation loss; ``options``: backbone (required), objective ('auto', 'mlm', 'clm'), epochs,
    batch_size, lr, mlm_probability, max_length, precision, checkpoint_dir (resume after a kill), random_state."""
    entry = get_task(task) if isinstance(task, str) else task
    if entry.modality == "tabular":
        from .ctr.pretrain import pretrain_ctr

        return pretrain_ctr(X, task=entry, out=out, X_val=X_val, **options)
    if entry.modality == "text":
        from .text_pretrain import pretrain_text

        if "backbone" not in options:
            raise ValueError("pretrain(task=<a text task>) needs backbone=...; fix: e.g. backbone='minilm-l6'")
        return pretrain_text(X, out=out, texts_val=X_val, **options)
    raise ValueError(f"pretrain(task={entry.name!r}) is not available yet: pretraining exists for task='ctr' and "
                     "the text tasks; fix: fine-tune the pretrained vision backbone directly")
