"""Deliberately broken implementations of the contract's score features (value_dim, score_mod, alibi, sinks,
return_lse), each the plain formula with one bug, most of them seen in real attention code:
- sink_no_grad: the sinks get no gradient (Dao-AILab/flash-attention#1973: learnable sinks had no gradient in
  flash_attn.cute).
- sink_bwd_without_sink: the forward has the sink, the backward is the no-sink softmax's, and dsink is 0
  (Dao-AILab/flash-attention#2102: "only fwd supports sink, bwd is without sink").
- sink_grad_ignores_dlse: dsink takes only the output's share, not the returned lse's (the case asked for in the
  review of Dao-AILab/flash-attention#2706, which first differentiated `out` alone).
- lse_base2: the lse in base 2, as kernels keep it internally for exp2 (pytorch/pytorch#181645).
- lse_bthd_layout: the lse written (B, Tq, H) and read as (B, H, Tq) (the layout half of pytorch/pytorch#181645).
- lse_unscaled: the lse of q.k without the softmax scale (a kernel that folds the scale into exp2 and forgets it
  when it writes the lse).
- lse_empty_row_zero: a row that sees no key returns lse 0 instead of -inf, so a merge weighs its empty shard
  (the -inf fill of the zero-length path in Dao-AILab/flash-attention#2706).
- mla_scale_from_v: the default scale 1/sqrt(Dv) instead of 1/sqrt(D) when the value head dim differs (DeepSeek
  MLA: D 192, Dv 128).
- alibi_top_left: the ALiBi distance from the query's index, not its absolute position, when Tq < Tk (the index-
  vs position-anchored mask of onnx/onnx#8054, in the bias).
- score_mod_relative_q: score_mod gets q_idx from 0 instead of the absolute position (onnx/onnx#8054).
Test assets only, never registered; each declares every feature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from attnbench import FEATURES
from attnbench.dense import repeat_kv, visible_mask
from attnbench.visibility import index_grid
from mutants import Mutant, one_bug

ALL = frozenset(FEATURES)


def _attend(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, mask_mod=None, document_ids=None,
            softcap=None, score_mod=None, alibi_slopes=None, sinks=None, return_lse=False, bug=""):  # fmt: skip
    # q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv)
    (b, hq, tq, d), tk = q.shape, k.size(-2)
    k, v = repeat_kv(k, hq), repeat_kv(v, hq)  # (B, Hq, Tk, D), (B, Hq, Tk, Dv)
    if scale is None:
        scale = 1.0 / math.sqrt(v.size(-1) if bug == "mla_scale_from_v" else d)
    s = q @ k.transpose(-2, -1)  # (B, Hq, Tq, Tk) unscaled
    s_unscaled, s = s, s * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    bi, hi, pos, keys = index_grid(b, hq, tq, tk, q.device)
    from_zero = pos - (tk - tq)  # (1, 1, Tq, 1) the query's index
    if score_mod is not None:
        s = score_mod(s, bi, hi, from_zero if bug == "score_mod_relative_q" else pos, keys).to(s.dtype)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(s.dtype).reshape(-1, hq)[:, :, None, None]  # (B or 1, Hq, 1, 1)
        s = s - slopes * ((from_zero if bug == "alibi_top_left" else pos) - keys).abs()
    vis = visible_mask(q, k, causal=causal, window=window, mask_mod=mask_mod, document_ids=document_ids)
    vis = torch.ones_like(s, dtype=torch.bool) if vis is None else vis.expand_as(s)  # (B, Hq, Tq, Tk)
    weights, lse = _sink_softmax(s.masked_fill(~vis, float("-inf")), vis, sinks, bug)
    if bug == "sink_bwd_without_sink":
        plain, _ = _sink_softmax(s.masked_fill(~vis, float("-inf")), vis, None, bug)
        weights = plain + (weights - plain).detach()  # the forward's weights, the no-sink softmax's gradient
    out = (F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights) @ v  # (B, Hq, Tq, Dv)
    if not return_lse:
        return out
    if bug == "lse_base2":
        lse = lse / math.log(2.0)
    elif bug == "lse_bthd_layout":
        lse = lse.transpose(1, 2).reshape(b, hq, tq)  # (B, Tq, Hq) memory read as (B, Hq, Tq)
    elif bug == "lse_unscaled":
        lse = _sink_softmax(s_unscaled.masked_fill(~vis, float("-inf")), vis, sinks, bug)[1]
    elif bug == "lse_empty_row_zero":
        lse = lse.nan_to_num(neginf=0.0)
    return out, lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def _sink_softmax(s, vis, sinks, bug):
    """(weights (B, Hq, Tq, Tk), lse (B, Hq, Tq)) of scores already -inf where hidden, the sink as one more column."""
    b, hq, tq, tk = s.shape
    sink = torch.full((b, hq, tq, 1), float("-inf"), dtype=s.dtype, device=s.device)
    if sinks is not None:
        sink = (sinks.detach() if bug in ("sink_no_grad", "sink_bwd_without_sink") else sinks).to(s.dtype)
        sink = sink.view(1, hq, 1, 1).expand(b, hq, tq, 1)
    seen = vis.any(-1, keepdim=True) | (sinks is not None)  # (B, Hq, Tq, 1)
    full = torch.cat([s, sink], dim=-1).masked_fill(~seen, 0.0)  # (B, Hq, Tq, Tk + 1)
    lse_full = full if bug != "sink_grad_ignores_dlse" else torch.cat([s, sink.detach()], -1).masked_fill(~seen, 0.0)
    weights = torch.softmax(full, dim=-1)[..., :tk] * seen
    return weights, torch.logsumexp(lse_full, dim=-1).masked_fill(~seen[..., 0], float("-inf"))


BUGS = {  # mutant -> what is wrong
    "sink_no_grad": "the sinks get no gradient",
    "sink_bwd_without_sink": "the backward ignores the sink (no-sink softmax gradient, dsink 0)",
    "sink_grad_ignores_dlse": "dsink misses the returned lse's share",
    "lse_base2": "the lse in base 2",
    "lse_bthd_layout": "the lse written (B, Tq, H), read as (B, H, Tq)",
    "lse_unscaled": "the lse of the unscaled logits",
    "lse_empty_row_zero": "a row that sees no key has lse 0, not -inf",
    "mla_scale_from_v": "the default scale from the value head dim",
    "alibi_top_left": "the ALiBi distance from the query index, not its absolute position",
    "score_mod_relative_q": "score_mod gets q_idx from 0, not the absolute position",
}
MUTANTS: list[Mutant] = [one_bug(_attend, bug, what, ALL) for bug, what in BUGS.items()]
