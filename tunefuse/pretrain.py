"""``pretrain``: continue (or start) a backbone's pretraining on unlabelled in-domain data, one entry point for
every modality. Today: CTR networks on interaction logs (tunefuse/ctr/pretrain.py); text backbones join it with
masked-language-model pretraining (the backbone-choice issue)."""
from __future__ import annotations

from pathlib import Path

from .tasks import get_task


def pretrain(X, *, task="ctr", out, X_val=None, **options) -> Path:
    """Pretrain on unlabelled rows ``X`` and write a backbone folder to ``out`` that ``Finetuner(out, task=...)``
    fine-tunes. ``task='ctr'``: ``X`` is the interaction log (user, item, history; attributes are ignored),
    ``X_val`` held-out interactions for HR@10/NDCG@10 per epoch; ``options``: epochs, negatives, batch_size, lr,
    weight_decay, config_overrides (the architecture), random_state, verbose."""
    entry = get_task(task) if isinstance(task, str) else task
    if entry.modality == "tabular":
        from .ctr.pretrain import pretrain_ctr

        return pretrain_ctr(X, task=entry, out=out, X_val=X_val, **options)
    raise ValueError(f"pretrain(task={entry.name!r}) is not available yet: behaviour pretraining exists for "
                     "task='ctr'; fix: pass task='ctr', or fine-tune the pretrained text/vision backbone directly")
