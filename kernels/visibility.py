"""What a query may see, as one value: the contract's masks (causal, window, documents, mask_mod), ANDed.

    vis = Visibility(causal=True, window=256, document_ids=docs)
    vis.sees(b, h, pos, key)           # the rule, once: index tensors broadcast (absolute positions)
    vis.dense(B, Hq, Tq, Tk, device)   # (B or 1, Hq or 1, Tq, Tk) bool, None when every key is visible
    vis.query_rows(j0, j1, Tq, Tk)     # the query rows [i0, i1) that can see keys [j0, j1) (block skipping)
    vis.visible_pairs(B, Hq, Tq, Tk)   # the (query, key) pairs computed: closed form for causal and window

Query i of Tq sits at absolute position Tk - Tq + i (bottom-right alignment). The dense backends
(`dense.visible_mask`), chunked's blocks, flex's mask_mod and the benchmarks' FLOP counts all ask this value, so the
rule "position p sees keys p - window + 1 .. p" is written here alone; the float64 reference of the conformance
suite keeps its own independent formula (tril/triu offsets), which is what it checks this against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import AttentionInputError


def index_grid(b: int, hq: int, tq: int, tk: int, device) -> tuple[torch.Tensor, ...]:
    """The index tensors of mask_mod and score_mod, broadcasting to (B, Hq, Tq, Tk): batch (B, 1, 1, 1), query
    head (1, Hq, 1, 1), absolute query position (1, 1, Tq, 1) (query i sits at Tk - Tq + i), key (1, 1, 1, Tk)."""
    bi = torch.arange(b, device=device).view(b, 1, 1, 1)
    hi = torch.arange(hq, device=device).view(1, hq, 1, 1)
    pos = torch.arange(tk - tq, tk, device=device).view(1, 1, tq, 1)
    return bi, hi, pos, torch.arange(tk, device=device).view(1, 1, 1, tk)


@dataclass(frozen=True, eq=False)
class Visibility:
    causal: bool = True
    window: int | None = None  # causal only: the latest `window` keys, the query's own included
    mask_mod: Callable | None = None  # (b, h, q_idx, kv_idx) -> bool, FlexAttention's convention, absolute positions
    document_ids: torch.Tensor | None = None  # (B, Tk): a query sees only keys of its own document

    @property
    def everything(self) -> bool:
        """Every query sees every key."""
        return not self.causal and self.mask_mod is None and self.document_ids is None

    @property
    def positional(self) -> bool:
        """Causal and window alone: what a query sees depends on its position only (closed forms apply)."""
        return self.mask_mod is None and self.document_ids is None

    def sees(self, b, h, pos, key) -> torch.Tensor | None:
        """True where the query at absolute position `pos` (query head h of batch item b) may see `key`: index
        tensors that broadcast against each other (or flex's scalars); None when every key is visible."""
        vis = (key <= pos) if self.causal else None
        if self.window is not None:
            vis = vis & (key > pos - self.window)
        if self.document_ids is not None:
            same = self.document_ids[b, pos] == self.document_ids[b, key]
            vis = same if vis is None else vis & same
        if self.mask_mod is not None:
            m = torch.as_tensor(self.mask_mod(b, h, pos, key), device=key.device)
            if m.dtype != torch.bool:
                raise AttentionInputError(f"mask_mod must return a bool tensor, got {m.dtype}")
            m = m.reshape((1,) * (key.dim() - m.dim()) + tuple(m.shape))  # as many dims as the index tensors
            vis = m if vis is None else vis & m
        return vis

    def dense(self, b: int, hq: int, tq: int, tk: int, device) -> torch.Tensor | None:
        """(B or 1, Hq or 1, Tq, Tk) bool, True where query i may see key j; None when every key is visible."""
        if self.everything:
            return None
        return self.sees(*index_grid(b, hq, tq, tk, device))

    def query_rows(self, j0: int, j1: int, tq: int, tk: int) -> tuple[int, int]:
        """[i0, i1): the only query rows that causal and the window let see a key of [j0, j1) (empty if i0 >= i1)."""
        off = tk - tq
        i0 = max(0, j0 - off) if self.causal else 0  # earlier queries are before the block
        i1 = tq if self.window is None else min(tq, j1 - 1 + self.window - off)  # later ones are past its reach
        return i0, i1

    def visible_pairs(self, b: int, hq: int, tq: int, tk: int, device="cpu") -> int:
        """How many (query, key) pairs are visible, over the batch and the query heads: what attention computes."""
        if self.positional:
            if not self.causal:
                return b * hq * tq * tk
            seen = (p + 1 if self.window is None else min(p + 1, self.window) for p in range(tk - tq, tk))
            return b * hq * sum(seen)
        vis = self.dense(b, hq, tq, tk, device)
        return int(vis.expand(b, hq, tq, tk).sum())
