"""The masked attention formula of the extended contract (GQA, window, mask_mod, documents, softcap), naive.

Built apart from attnbench's own helpers (visible_mask, masked_softmax, repeat_kv) so that a bug there cannot
hide in the oracle too: the key/value head of each query head is gathered by an explicit index h // group, the
causal and window masks come from tril/triu offsets, documents from an equality table per batch item, and
mask_mod is evaluated on meshgrid index tensors.
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

    def kwargs(self) -> dict:
        """The keyword arguments to pass a backend: only those in use."""
        given = {"window": self.window, "mask_mod": self.mask_mod, "document_ids": self.document_ids}
        return {k: v for k, v in {**given, "softcap": self.softcap}.items() if v is not None}


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
    """The naive formula in the inputs' dtype (float64 inputs: the reference). q: (B, Hq, Tq, D); k, v: (B, Hkv,
    Tk, D). A query row that sees no key is 0, with zero gradient."""
    b, hq, tq, d = q.shape
    tk, hkv = k.size(-2), k.size(1)
    heads = torch.arange(hq, device=q.device) // (hq // hkv)  # (Hq,) the key/value head of each query head
    k, v = k.index_select(1, heads), v.index_select(1, heads)  # (B, Hq, Tk, D)
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d) if scale is None else scale)  # (B, Hq, Tq, Tk)
    if f.softcap is not None:
        s = f.softcap * torch.tanh(s / f.softcap)
    vis = reference_visible(b, hq, tq, tk, causal, f, q.device)
    seen = vis.any(dim=-1, keepdim=True)  # (B, Hq, Tq, 1)
    s = s.masked_fill(~vis, float("-inf")).masked_fill(~seen, 0.0)  # an empty row: finite, removed below
    return (torch.softmax(s, dim=-1) * seen) @ v  # (B, Hq, Tq, D)
