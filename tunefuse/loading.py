"""Building a model: a pretrained backbone (registry entry, local folder, hub id, GGUF file) + a task's new head,
or a saved tunefuse checkpoint, which is self-contained (it never looks the backbone up again)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from .backbones import resolve_backbone
from .device import attention_implementation

# Config names of dropout across architectures: BERT, DistilBERT, GPT-2, Llama (hidden, attention, embeddings).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "classifier_dropout")


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


def auto_class(name: str):
    import transformers

    return getattr(transformers, name)


def head_module(model: torch.nn.Module, names: tuple[str, ...]) -> tuple[str, torch.nn.Module]:
    """The task head of ``model``: the first attribute of ``names`` that is a module (peft wrappers unwrapped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in names:
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return name, getattr(base, name)
    raise ValueError(f"{type(base).__name__} has none of the heads {list(names)}; fix: use strategy='full' or 'lora'")


def resolve_pooling(pooling: str, source: str, model: torch.nn.Module, head: torch.nn.Module | None) -> str:
    """'mean' or 'native' for ``model`` loaded from ``source``; 'auto' follows the sentence-transformers config."""
    mean_ok = isinstance(head, torch.nn.Linear) and head.in_features == model.config.hidden_size and hasattr(
        model, "base_model_prefix")
    if pooling == "auto":
        return "mean" if _declares_mean_pooling(source) and mean_ok else "native"
    if pooling == "mean" and not mean_ok:
        raise ValueError(f"pooling='mean' needs a linear head on the hidden states; {type(model).__name__} has "
                         f"{type(head).__name__ if head is not None else 'no head'}; fix: pass pooling='native'")
    return pooling


def load_pretrained(backbone: str, auto_model: str, *, num_labels: int | None, id2label: dict | None = None,
                    dropout: float | None = 0.0, config_overrides: dict | None = None,
                    trust_remote_code: bool = False, device: torch.device):
    """(model, tokenizer, default max length, source folder) for ``backbone`` with a freshly initialised head."""
    source, entry = resolve_backbone(backbone)
    load = dict(entry.load_kwargs if entry else {}, trust_remote_code=trust_remote_code)
    # GGUF weights are dequantised to float32; anything else must be safetensors (never a pickle)
    weights = {"dtype": torch.float32} if "gguf_file" in load else {"use_safetensors": True}
    kwargs = dict({"attn_implementation": attention_implementation(device)}, **(config_overrides or {}), **load,
                  **weights)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if id2label:
        kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    from transformers import AutoConfig, AutoTokenizer

    try:
        with quiet_transformers():
            if dropout is not None:
                config = AutoConfig.from_pretrained(source, **load)
                kwargs.update({k: dropout for k in DROPOUT_KEYS if isinstance(getattr(config, k, None), float)})
            tokenizer = AutoTokenizer.from_pretrained(source, **load)
            model = auto_class(auto_model).from_pretrained(source, **kwargs)
        if "gguf_file" in load:  # dequantised to plain float32 weights: save as an ordinary safetensors model
            model.hf_quantizer, model.is_quantized = None, False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
    except ImportError as e:  # e.g. gguf, which only the GGUF backbones need
        raise ValueError(f"backbone={backbone!r} needs a package that is not installed ({str(e)[:200]}); "
                         f"fix: {(entry.install if entry else '') or 'install the package the message names'}") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"backbone={backbone!r} could not be loaded from {source!r} as {auto_model} "
                         f"({str(e)[:200]}); fix: pass a registered name, a folder with config.json + "
                         "model.safetensors + tokenizer, or a hub id while online") from e
    if tokenizer.pad_token_id is None:  # decoders (GPT-2, Llama) ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    if auto_model == "AutoModelForSequenceClassification" and _declares_mean_pooling(source):
        linear_head(model)
    return model, tokenizer, (entry.max_length if entry else 128), source


def _declares_mean_pooling(source: str) -> bool:
    """Whether ``source`` is a sentence-transformers folder whose pooling is the mean of the tokens."""
    path = Path(source) / "1_Pooling" / "config.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("pooling_mode_mean_tokens"))


class PooledLinear(torch.nn.Linear):
    """One linear layer in place of a two-layer ``*ClassificationHead`` (MPNet's, RoBERTa's: dense, tanh, out_proj).
    A sentence-transformers checkpoint ships no such head, so its dense layer would start random; its mean-pooled
    features were trained to be used directly, so they go to one linear layer, which the probe fits and LP-FT
    starts from. Given the model's (N, L, H) hidden states (its own forward) it reads the first token, as the
    replaced head did."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, 0] if x.ndim == 3 else x)


def linear_head(model: torch.nn.Module) -> bool:
    """Swap ``model.classifier`` for a ``PooledLinear`` when it is a two-layer head; marks ``config.tunefuse_
    linear_head`` so a saved model is rebuilt the same way. Initialised like transformers' heads (normal, std
    ``initializer_range``; bias 0)."""
    head = getattr(model, "classifier", None)
    out = getattr(head, "out_proj", None)
    if not isinstance(out, torch.nn.Linear) or isinstance(head, torch.nn.Linear):
        return False
    new = PooledLinear(model.config.hidden_size, out.out_features, device=out.weight.device, dtype=out.weight.dtype)
    torch.nn.init.normal_(new.weight, std=getattr(model.config, "initializer_range", 0.02))
    torch.nn.init.zeros_(new.bias)
    model.classifier = new
    model.config.tunefuse_linear_head = True
    return True


def load_saved(path: Path, auto_model: str, *, attn_implementation: str, trust_remote_code: bool = False):
    """(model, tokenizer) of a folder written by ``Finetuner.save``: safetensors only, never a pickle."""
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            model = auto_class(auto_model).from_pretrained(path, use_safetensors=True,
                                                           trust_remote_code=trust_remote_code,
                                                           attn_implementation=attn_implementation)
            tokenizer = AutoTokenizer.from_pretrained(path)
        if getattr(model.config, "tunefuse_linear_head", False) and linear_head(model):
            from safetensors import safe_open

            found = set()
            for file in sorted(Path(path).glob("*.safetensors")):  # the saved linear head's weights
                with safe_open(str(file), "pt") as f:
                    for k in ("weight", "bias"):
                        if f"classifier.{k}" in f.keys():
                            getattr(model.classifier, k).data.copy_(f.get_tensor(f"classifier.{k}"))
                            found.add(k)
            if found != {"weight", "bias"}:
                raise ValueError(f"the linear head's classifier.{{weight,bias}} are not in its safetensors (found "
                                 f"{sorted(found)})")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{str(path)!r} could not be read as a {auto_model} checkpoint "
                         f"({type(e).__name__}: {str(e)[:160]}); the files are damaged or incomplete: save the model "
                         "again (a copy that was cut short, e.g. by a full disk, looks like this)") from e
    return model, tokenizer
