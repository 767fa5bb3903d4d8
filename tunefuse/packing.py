"""Padding-free forward passes for BERT-style encoders: a batch's real tokens packed into one row.

A random batch of 16 reviews is 38 % padding in its linear layers and 55 % in attention (max length 128; see
bench/results/profile_train_*.txt). Packed, the embeddings, every linear layer, GELU and LayerNorm run on real tokens
only; attention re-pads per group of similar lengths, so each sequence attends to itself alone and the result equals
the padded forward (tests/test_packing.py). transformers' own padding-free path (``DataCollatorWithFlattening``)
relies on flash-attention's varlen kernels, which are CUDA-only, so this registers a CPU attention for the packed
layout through transformers' ``AttentionInterface``; written by hand because no maintained library offers varlen
attention on CPU.

``with packed(model):`` installs it for the duration (forward hooks on the encoder, the attention implementation
swapped on its config, both restored on exit); models it does not know run padded, unchanged.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedModel

from .data import split_by_length

NAME = "tunefuse_packed"
# Encoders whose embeddings take position ids restarting at 0 for each sequence and whose attention goes through
# transformers' AttentionInterface (checked against the padded forward in tests/test_packing.py).
PACKABLE = ("bert",)
# Attention groups: a group of b sequences padded to its longest L costs ~b·L² plus a fixed cost per group, in
# token-equivalents of the linear cost the split function models; sorted lengths are cut where padding outweighs it.
GROUP_OVERHEAD = 2048


@dataclass
class Group:
    index: torch.Tensor  # (b, L): packed position of each (sequence, position); padding points at position 0
    bias: torch.Tensor  # (b, 1, 1, L): 0 on real keys, -inf on padding
    real: torch.Tensor  # (n,): flat (b·L) positions of the real tokens, in packed order within the group


@dataclass
class Layout:
    keep: torch.Tensor  # (B, L) bool: the real tokens of the padded batch
    groups: list[Group]
    inverse: torch.Tensor | None  # packed position -> row of the groups' concatenated outputs (None: same)


_LAYOUT: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("tunefuse_packed_layout", default=None)
_ACTIVE: dict[int, tuple[Layout, contextvars.Token]] = {}  # encoder id -> its forward's layout, between the hooks


def _layout(mask: torch.Tensor, dtype: torch.dtype) -> Layout:
    keep = mask.bool()
    lengths = keep.sum(1).cpu().numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    groups, order = [], []
    for rows in split_by_length(lengths, GROUP_OVERHEAD) if len(lengths) > 1 else [np.arange(len(lengths))]:
        width = int(lengths[rows].max())
        pos = np.arange(width)
        real = pos[None, :] < lengths[rows, None]  # (b, L)
        index = np.where(real, starts[rows, None] + pos[None, :], 0)
        bias = np.where(real, 0.0, -np.inf)[:, None, None, :]
        groups.append(Group(torch.as_tensor(index, device=mask.device),
                            torch.as_tensor(bias, dtype=dtype, device=mask.device),
                            torch.as_tensor(np.flatnonzero(real), device=mask.device)))
        order.append(index[real])
    order = np.concatenate(order)  # the packed position of each row of the groups' concatenated outputs
    inverse = None if (np.diff(order) > 0).all() else torch.as_tensor(np.argsort(order), device=mask.device)
    return Layout(keep, groups, inverse)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention over the packed layout: (1, heads, T, d) in, (1, T, heads, d) out, as transformers expects."""
    layout = _LAYOUT.get()
    if layout is None:
        raise RuntimeError("the packed attention ran outside tunefuse.packing.packed(model); fix: call the model "
                           "inside `with packed(model):` or restore config._attn_implementation")
    q, k, v = query[0], key[0], value[0]  # (H, T, d)
    scaling = q.shape[-1] ** -0.5 if scaling is None else scaling
    outs = []
    for g in layout.groups:
        # index_select, not advanced indexing: its backward is index_add, not the much slower index_put(accumulate)
        qg, kg, vg = (t.index_select(1, g.index.flatten()).unflatten(1, g.index.shape).transpose(0, 1)
                      for t in (q, k, v))  # (b, H, L, d)
        scores = torch.matmul(qg, kg.transpose(-1, -2)) * scaling + g.bias
        probs = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
        out = torch.matmul(probs, vg).transpose(1, 2)  # (b, L, H, d)
        outs.append(out.reshape(-1, *out.shape[2:]).index_select(0, g.real))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    if layout.inverse is not None:  # groups follow sorted lengths: back to packed order
        out = out.index_select(0, layout.inverse)
    return out.unsqueeze(0), None


AttentionInterface.register(NAME, packed_attention)


def _pack(module, args, kwargs):
    input_ids = args[0] if args else kwargs.get("input_ids")
    mask = kwargs.get("attention_mask")
    if (input_ids is None or mask is None or mask.dim() != 2 or kwargs.get("position_ids") is not None
            or kwargs.get("inputs_embeds") is not None or kwargs.get("output_hidden_states")
            or kwargs.get("output_attentions")):
        return None
    layout = _layout(mask, module.dtype if module.dtype.is_floating_point else torch.float32)
    keep = layout.keep
    packed_kwargs = dict(kwargs, input_ids=input_ids[keep][None], attention_mask=None,
                         position_ids=(mask.long().cumsum(1) - 1)[keep][None])
    if kwargs.get("token_type_ids") is not None:
        packed_kwargs["token_type_ids"] = kwargs["token_type_ids"][keep][None]
    _ACTIVE[id(module)] = (layout, _LAYOUT.set(layout))
    return (), packed_kwargs


def _unpack(module, args, kwargs, output):
    if id(module) not in _ACTIVE:  # this forward ran padded
        return None
    layout, token = _ACTIVE.pop(id(module))
    _LAYOUT.reset(token)
    hidden = output.last_hidden_state[0]  # (T, hidden)
    keep = layout.keep
    flat = layout.keep.flatten().nonzero().squeeze(1)
    padded = hidden.new_zeros((keep.numel(), hidden.shape[-1])).index_copy(0, flat, hidden).view(*keep.shape, -1)
    output.last_hidden_state = padded
    if getattr(module, "pooler", None) is not None and getattr(output, "pooler_output", None) is not None:
        output.pooler_output = module.pooler(padded)
    return output


def packable_encoder(model: torch.nn.Module) -> PreTrainedModel | None:
    """The encoder inside ``model`` (a task model, peft-wrapped or not) that packing knows, or None."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if (isinstance(m, PreTrainedModel) and getattr(cfg, "model_type", None) in PACKABLE
                and not cfg.is_decoder and hasattr(m, "embeddings") and hasattr(m, "encoder")):
            return m
    return None


@contextlib.contextmanager
def packed(model: torch.nn.Module, enabled: bool = True):
    """Run ``model``'s encoder padding-free inside the block; yields whether it does (False: not a known encoder)."""
    encoder = packable_encoder(model) if enabled else None
    if encoder is None:
        yield False
        return
    saved = encoder.config._attn_implementation
    encoder.config._attn_implementation = NAME
    hooks = [encoder.register_forward_pre_hook(_pack, with_kwargs=True),
             encoder.register_forward_hook(_unpack, with_kwargs=True)]
    try:
        yield True
    finally:
        for h in hooks:
            h.remove()
        encoder.config._attn_implementation = saved
        if _ACTIVE.pop(id(encoder), None) is not None:  # a forward that raised between the hooks
            _LAYOUT.set(None)
