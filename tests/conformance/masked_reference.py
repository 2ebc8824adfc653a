"""The masked attention formula of the extended contract (GQA, window, mask_mod, documents, softcap, value head
dim, score_mod, ALiBi, sinks, lse), naive.

Built apart from attnbench's own helpers (visible_mask, shaped_scores, sink_softmax, repeat_kv) so that a bug
there cannot hide in the oracle too: the key/value head of each query head is gathered by an explicit index
h // group, the causal and window masks come from tril/triu offsets, documents from an equality table per batch
item, mask_mod, score_mod and ALiBi are evaluated on meshgrid index tensors, and a sink is one more column of the
score matrix (its value row is absent), so one softmax and one logsumexp over Tk + 1 columns give the weights and
the lse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Features:
    """The optional features of one call; each None (or Hkv == Hq) means off."""

    window: int | None = None
    mask_mod: object = None  # callable (b, h, q_idx, kv_idx) -> bool tensor, on absolute positions
    document_ids: torch.Tensor | None = None  # (B, Tk) integers
    softcap: float | None = None
    score_mod: object = None  # callable (score, b, h, q_idx, kv_idx) -> score, on absolute positions
    alibi_slopes: torch.Tensor | None = None  # (Hq,) or (B, Hq)
    sinks: torch.Tensor | None = None  # (Hq,)

    def kwargs(self) -> dict:
        """The keyword arguments to pass a backend: only those in use."""
        given = {"window": self.window, "mask_mod": self.mask_mod, "document_ids": self.document_ids}
        given |= {"softcap": self.softcap, "score_mod": self.score_mod, "alibi_slopes": self.alibi_slopes}
        return {k: v for k, v in {**given, "sinks": self.sinks}.items() if v is not None}


def reference_visible(b: int, hq: int, tq: int, tk: int, causal: bool, f: Features, device) -> torch.Tensor:
    """(B, Hq, Tq, Tk) bool, True where query i (absolute position Tk - Tq + i) may see key j."""
    ones = torch.ones(tq, tk, dtype=torch.bool, device=device)
    vis = ones.tril(diagonal=tk - tq) if causal else ones  # (Tq, Tk)
    if f.window is not None:
        vis = vis & ones.triu(diagonal=tk - tq - f.window + 1)  # key >= position - window + 1
    vis = vis.expand(b, hq, tq, tk).clone()
    if f.document_ids is not None:
        for bi in range(b):
            ids = f.document_ids[bi].to(device)  # (Tk,)
            vis[bi] &= (ids[tk - tq :].unsqueeze(1) == ids.unsqueeze(0)).unsqueeze(0)  # (1, Tq, Tk)
    if f.mask_mod is not None:
        grid = torch.meshgrid(
            torch.arange(b, device=device),
            torch.arange(hq, device=device),
            torch.arange(tk - tq, tk, device=device),
            torch.arange(tk, device=device),
            indexing="ij",
        )  # four (B, Hq, Tq, Tk) index tensors
        vis &= f.mask_mod(*grid).to(torch.bool)
    return vis


def masked_attention_formula(q, k, v, *, causal: bool, scale: float | None, f: Features) -> torch.Tensor:
    """The output of masked_attention_with_lse."""
    return masked_attention_with_lse(q, k, v, causal=causal, scale=scale, f=f)[0]


def masked_attention_with_lse(q, k, v, *, causal: bool, scale: float | None, f: Features):
    """The naive formula in the inputs' dtype (float64 inputs: the reference). q: (B, Hq, Tq, D); k: (B, Hkv, Tk,
    D); v: (B, Hkv, Tk, Dv) -> out (B, Hq, Tq, Dv), lse (B, Hq, Tq) (natural log of the softmax denominator, sink
    included). A query row that sees no key (and has no sink) is 0 with zero gradient, and its lse is -inf."""
    b, hq, tq, d = q.shape
    tk, hkv = k.size(-2), k.size(1)
    heads = torch.arange(hq, device=q.device) // (hq // hkv)  # (Hq,) the key/value head of each query head
    k, v = k.index_select(1, heads), v.index_select(1, heads)  # (B, Hq, Tk, D), (B, Hq, Tk, Dv)
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d) if scale is None else scale)  # (B, Hq, Tq, Tk)
    if f.softcap is not None:
        s = f.softcap * torch.tanh(s / f.softcap)
    grid = torch.meshgrid(
        torch.arange(b, device=q.device),
        torch.arange(hq, device=q.device),
        torch.arange(tk - tq, tk, device=q.device),
        torch.arange(tk, device=q.device),
        indexing="ij",
    )  # four (B, Hq, Tq, Tk) index tensors: batch, query head, absolute query position, key
    if f.score_mod is not None:
        s = f.score_mod(s, *grid).to(s.dtype)  # a score_mod reading h or positions may promote the dtype
    if f.alibi_slopes is not None:
        slope = f.alibi_slopes.to(s.dtype).expand(b, hq)[grid[0], grid[1]]  # (B, Hq, Tq, Tk)
        s = s - slope * (grid[2] - grid[3]).abs()
    vis = reference_visible(b, hq, tq, tk, causal, f, q.device)
    sink = torch.full((b, hq, tq, 1), float("-inf"), dtype=s.dtype, device=q.device)  # no sink: exp(-inf) = 0
    if f.sinks is not None:
        sink = f.sinks.to(s.dtype).view(1, hq, 1, 1).expand(b, hq, tq, 1)
    s = torch.cat([s.masked_fill(~vis, float("-inf")), sink], dim=-1)  # (B, Hq, Tq, Tk + 1)
    seen = vis.any(dim=-1, keepdim=True) | (f.sinks is not None)  # (B, Hq, Tq, 1)
    s = s.masked_fill(~seen, 0.0)  # an empty row: finite, removed below
    out = (torch.softmax(s, dim=-1)[..., :tk] * seen) @ v  # (B, Hq, Tq, Dv)
    return out, torch.logsumexp(s, dim=-1).masked_fill(~seen[..., 0], float("-inf"))  # (B, Hq, Tq)
