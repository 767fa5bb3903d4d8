"""The model that predicts: the trained one, or a bf16 copy of it, with the fastest attention for a forward pass.

Training keeps fp32 master weights under bf16 autocast (small updates survive only in fp32). A forward pass needs
neither the master copy nor autocast's per-op casts: predicting from a bf16 copy of the weights, with PyTorch's fused
attention (SDPA; eager attention stays for training, whose SDPA backward is slow on CPU for short sequences), is
faster on CPU than the training-time forward (bench/predict_ab.py; figures in bench/results/predict_ab_*.txt), and
is how the Trainer's ``bf16_full_eval`` predicts. Padded batches, not packed ones: inference batches are
length-sorted, so they carry little padding, and packing's gathers then cost more than they save (row ``packed``).

The copy is made on first use and kept until a weight of the trained model changes: every parameter's identity and
version counter are its key (bumped by each in-place write: ``load_state_dict``, torch's foreach optimisers, and
tunefuse.train.AdamW, which bumps them after torch's fused kernel, since that kernel does not; a write through
``.data`` is not seen). It is never pickled, deep-copied or saved: checkpoints and weight-space fusion see the fp32
weights only.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

BF16_WEIGHTS = True  # predict from a bf16 copy where precision is bf16 (False: autocast over the fp32 weights)
ATTENTION = "tunefuse_sdpa_aligned"  # attention at inference ("sdpa": PyTorch's as is; None: the training attention)
ALIGN = 16  # sequence lengths padded to a multiple of this inside the aligned SDPA
PACKED = False  # padding-free packed forwards at inference too (tunefuse.packing; on for training on CPU)


class InferenceModel:
    """Holds the inference copy of one estimator's model; empty again after a deep copy or a pickle round trip."""

    def __init__(self):
        self.model, self.params, self.versions = None, [], ()

    def __deepcopy__(self, memo):
        return InferenceModel()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def get(self, model: torch.nn.Module, precision: str) -> torch.nn.Module:
        """``model`` itself (fp32 precision) or its bf16 copy, refreshed when ``model``'s weights have changed."""
        if precision != "bf16" or not BF16_WEIGHTS:
            self.__init__()
            return model
        params = list(model.parameters())  # held, so a new model's parameters cannot reuse these ids
        versions = tuple(p._version for p in params)
        if (self.model is None or len(params) != len(self.params) or versions != self.versions
                or any(a is not b for a, b in zip(params, self.params))):
            self.__init__()  # free the stale copy before making the new one
            self.model, self.params, self.versions = bf16_copy(model), params, versions
        return self.model


def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode bf16 copy of ``model`` (LoRA adapters merged in, so the copy runs as a plain model)."""
    out = copy.deepcopy(model)
    if hasattr(out, "merge_and_unload"):  # a peft model mid-fit (validation between epochs)
        out = out.merge_and_unload()
    return out.to(torch.bfloat16).eval().requires_grad_(False)


def aligned_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with the sequence padded to a multiple of ``ALIGN`` inside the call only.

    PyTorch's CPU flash-attention kernel runs 2-3x slower at lengths just off a multiple of 32 than on them (95 vs 96
    tokens: 31 vs 14 ms for a batch of 8,192 tokens, MiniLM's 12 heads of 32 dims); padding the whole batch would put
    the linear layers on the extra tokens too, so only attention's query, key and value are padded (zeros), the
    padded keys masked out, and the padded queries' rows dropped. Written by hand: a workaround of a kernel's
    performance, not offered by any library. Encoders only: a causal mask is left to transformers' own SDPA.
    """
    length, keys = query.shape[-2], key.shape[-2]
    extra_q, extra_k = -length % ALIGN, -keys % ALIGN
    causal = kwargs.get("is_causal", getattr(module, "is_causal", False))
    if (not extra_q and not extra_k) or causal or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    pad = torch.nn.functional.pad
    query = pad(query, (0, 0, 0, extra_q))
    key, value = pad(key, (0, 0, 0, extra_k)), pad(value, (0, 0, 0, extra_k))
    if attention_mask is None:  # no padding in the batch: only the alignment keys are masked
        attention_mask = torch.ones((1, 1, 1, keys), dtype=torch.bool, device=query.device)
    if attention_mask.dtype == torch.bool:
        attention_mask = pad(attention_mask, (0, extra_k), value=False)
        if attention_mask.shape[-2] == length:
            attention_mask = pad(attention_mask, (0, 0, 0, extra_q), value=True)
    else:  # additive float mask
        attention_mask = pad(attention_mask, (0, extra_k), value=float("-inf"))
        if attention_mask.shape[-2] == length:
            attention_mask = pad(attention_mask, (0, 0, 0, extra_q), value=0.0)
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out[:, :length], weights  # (batch, length, heads, dims)


AttentionInterface.register("tunefuse_sdpa_aligned", aligned_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register("tunefuse_sdpa_aligned", sdpa_mask)
_SUPPORT = {"tunefuse_sdpa_aligned": "_supports_sdpa", "sdpa": "_supports_sdpa"}


@contextlib.contextmanager
def fast_attention(model: torch.nn.Module):
    """Run the block with ``ATTENTION`` in every sub-model that supports it; the training attention is restored."""
    saved = []
    if ATTENTION is not None:
        for m in model.modules():
            cfg = getattr(m, "config", None)
            if isinstance(m, PreTrainedModel) and getattr(m, _SUPPORT.get(ATTENTION, "-"), False) \
                    and getattr(cfg, "_attn_implementation", None) not in (None, ATTENTION):
                saved.append((cfg, cfg._attn_implementation))
                cfg._attn_implementation = ATTENTION
    try:
        yield
    finally:
        for cfg, impl in reversed(saved):
            cfg._attn_implementation = impl
