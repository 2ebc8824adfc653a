"""Deliberately broken implementations of the contract's features (GQA, window, mask_mod, documents, softcap).

Test assets only, never registered; each declares every feature, so the feature properties hold it to all of
them. Each is the plain masked formula with one bug, most of them seen in real attention code:
- gqa_tiled_heads: k/v heads tiled (h % Hkv) instead of repeated per group (h // group): onnx/onnx#7274 (its
  GQA used Tile, torch uses repeat_interleave), apple/axlearn#842.
- gqa_dk_first_head: the backward keeps only the first query head's share of dk/dv (a missing group reduction).
- window_one_extra / window_one_short: window + 1 or window - 1 keys: huggingface/transformers#39408, zml/zml#763
  (flash-attn's window_size_left is window - 1), Dao-AILab/flash-attention#1133.
- window_top_left: the window counted from the query's index, not its absolute position, when Tq < Tk (the
  index- vs position-anchored mask of onnx/onnx#8054, Dao-AILab/flash-attention#481).
- docs_shifted_boundary: each document's first key is also seen by the previous document (a cumsum of boundaries
  off by one); docs_ignored_when_causal: documents dropped when causal=True (masks chosen, not ANDed).
- mask_mod_relative_q: mask_mod called with q_idx from 0 instead of the absolute position (onnx/onnx#8054).
- mask_mod_kv_head: mask_mod called with the key/value head instead of the query head under GQA.
- softcap_after_mask: softcap applied after the -inf fill: masked logits become -softcap and leak (the order
  Dao-AILab/flash-attention#1025 warns about).
- softcap_no_rescale: tanh(s / c) without the factor c (cf. unslothai/unsloth-zoo#593, a wrong softcap formula).
- empty_row_nan: a query row that sees no key gives NaN (pytorch/pytorch#103963, #103749).
- empty_row_uniform: such a row averages every value (a finite fill instead of a defined empty row).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from attnbench.call import BASE_FEATURES
from mutants import Mutant, one_bug

ALL = frozenset(BASE_FEATURES)


def _visible(q, k, *, causal, window, mask_mod, document_ids, bug, group):
    """(B|1, Hq|1, Tq, Tk) bool built like the contract says, except where `bug` names a change, or None."""
    (b, hq, tq, _), tk, dev = q.shape, k.size(-2), q.device
    pos = torch.arange(tk - tq, tk, device=dev)[:, None]  # (Tq, 1) absolute positions
    keys = torch.arange(tk, device=dev)[None, :]  # (1, Tk)
    vis = torch.ones(1, 1, tq, tk, dtype=torch.bool, device=dev)
    if causal:
        vis = vis & (keys <= pos)
    if window is not None:
        start = {"window_one_extra": window + 1, "window_one_short": window - 1}.get(bug, window)
        rows = torch.arange(tq, device=dev)[:, None] if bug == "window_top_left" else pos
        vis = vis & (keys > rows - start)
    if document_ids is not None and not (bug == "docs_ignored_when_causal" and causal):
        docs = document_ids
        same = docs[:, tk - tq :, None] == docs[:, None, :]  # (B, Tq, Tk)
        if bug == "docs_shifted_boundary":
            first = torch.ones_like(docs, dtype=torch.bool)
            first[:, 1:] = docs[:, 1:] != docs[:, :-1]  # (B, Tk) the first key of each document
            prev = torch.cat([docs[:, :1], docs[:, :-1]], dim=1)  # (B, Tk) the document just before it
            same = same | (first[:, None, :] & (docs[:, tk - tq :, None] == prev[:, None, :]))
        vis = vis & same[:, None]
    if mask_mod is not None:
        bi = torch.arange(b, device=dev)[:, None, None, None]
        hi = torch.arange(hq, device=dev)[None, :, None, None]
        if bug == "mask_mod_kv_head":
            hi = hi // group
        qi = (torch.arange(tq, device=dev)[:, None] if bug == "mask_mod_relative_q" else pos)[None, None]
        vis = vis & mask_mod(bi, hi, qi, keys[None, None])
    return vis


class _FirstHeadGrad(torch.autograd.Function):
    """Repeat k/v per group; the backward returns only the first query head's gradient of each group."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.repeat_interleave(group, dim=1)

    @staticmethod
    def backward(ctx, g):
        return g[:, :: ctx.group], None


def _attend(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, mask_mod=None, document_ids=None,
            softcap=None, bug=""):  # fmt: skip
    hq, hkv = q.size(1), k.size(1)
    group = hq // hkv
    if bug == "gqa_tiled_heads":
        k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)  # head h reads h % Hkv
    elif bug == "gqa_dk_first_head":
        k, v = _FirstHeadGrad.apply(k, group), _FirstHeadGrad.apply(v, group)
    else:
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, Hq, Tk, D)
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)) if scale is None else scale)  # (B, Hq, Tq, Tk)
    cap = (
        (lambda x: softcap * torch.tanh(x / softcap))
        if bug != "softcap_no_rescale"
        else (lambda x: torch.tanh(x / softcap))
    )
    if softcap is not None and bug != "softcap_after_mask":
        s = cap(s)
    masks = dict(window=window, mask_mod=mask_mod, document_ids=document_ids)
    vis = _visible(q, k, causal=causal, **masks, bug=bug, group=group)
    seen = vis.any(-1, keepdim=True)  # (.., Tq, 1)
    s = s.masked_fill(~vis, float("-inf"))
    if softcap is not None and bug == "softcap_after_mask":
        s = cap(s)  # tanh(-inf) = -1: a masked key gets logit -softcap, not -inf
    if bug == "empty_row_nan":
        p = torch.softmax(s, -1)
    elif bug == "empty_row_uniform":
        p = torch.softmax(s.masked_fill(~seen, 0.0), -1)
    else:
        p = torch.softmax(s.masked_fill(~seen, 0.0), -1) * seen  # (B, Hq, Tq, Tk)
    return F.dropout(p, p=dropout_p) @ v if dropout_p > 0 else p @ v  # (B, Hq, Tq, D)


def _mutant(bug: str, what: str) -> Mutant:
    return one_bug(_attend, bug, what, ALL)


MUTANTS: list[Mutant] = [
    _mutant("gqa_tiled_heads", "query head h reads key/value head h % Hkv instead of h // group"),
    _mutant("gqa_dk_first_head", "dk/dv keep only the first query head of each group"),
    _mutant("window_one_extra", "the window sees window + 1 keys"),
    _mutant("window_one_short", "the window sees window - 1 keys"),
    _mutant("window_top_left", "the window is counted from the query index, not its absolute position"),
    _mutant("docs_shifted_boundary", "a document's first key leaks to the document before it"),
    _mutant("docs_ignored_when_causal", "document_ids dropped when causal=True"),
    _mutant("mask_mod_relative_q", "mask_mod gets q_idx from 0, not the absolute position"),
    _mutant("mask_mod_kv_head", "mask_mod gets the key/value head, not the query head"),
    _mutant("softcap_after_mask", "softcap applied after masking: masked keys get logit -softcap"),
    _mutant("softcap_no_rescale", "tanh(s / softcap) without the factor softcap"),
    _mutant("empty_row_nan", "a query row with no visible key gives NaN"),
    _mutant("empty_row_uniform", "a query row with no visible key averages every value"),
]
