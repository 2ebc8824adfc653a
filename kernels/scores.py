"""How a call shapes its scores, as one value: the contract's score transforms (softcap, score_mod, ALiBi) in its order.

    shape = Scores(softcap=50.0, score_mod=None, alibi_slopes=slopes)
    shape(s, b, h, pos, key)   # the rule, once: elementwise on scaled logits, index tensors broadcast (absolute
                               # positions), so dense grids, chunked's slabs and flex's scalars all call it
    shape.dense(s, q, k)       # the (B, Hq, Tq, Tk) scores of a dense backend
    shape.cap(s), shape.modded(s, ...), shape.alibi(...)   # the pieces, for a kernel that fuses one of them

softcap is itself a score_mod (c * tanh(s / c)) applied first; the user's score_mod follows (FlexAttention's
convention); ALiBi adds -slope * |p - j| last, before masking. The float64 reference of the conformance suite keeps
its own formula, which is what it checks this against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .visibility import index_grid

ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Scores:
    softcap: float | None = None  # logits -> softcap * tanh(logits / softcap) (Gemma 2, Grok)
    score_mod: ScoreMod | None = None  # (score, b, h, q_idx, kv_idx) -> score, FlexAttention's, absolute positions
    alibi_slopes: torch.Tensor | None = None  # (Hq,) or (B, Hq): -slope * |p - j| added to each logit

    @property
    def identity(self) -> bool:
        """The scaled logits are the scores."""
        return self.softcap is None and self.score_mod is None and self.alibi_slopes is None

    @property
    def positional(self) -> bool:
        """A transform needs the index tensors (score_mod, ALiBi), not only the scores (softcap)."""
        return self.score_mod is not None or self.alibi_slopes is not None

    def cap(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.softcap is None else self.softcap * torch.tanh(s / self.softcap)

    def modded(self, s: torch.Tensor, b, h, pos, key) -> torch.Tensor:
        """softcap, then score_mod (in the scores' dtype: index arithmetic may promote)."""
        s = self.cap(s)
        return s if self.score_mod is None else self.score_mod(s, b, h, pos, key).to(s.dtype)

    def alibi(self, b, h, pos, key, dtype: torch.dtype) -> torch.Tensor:
        """-slope[b, h] * |pos - key| in `dtype`, broadcasting like the index tensors."""
        slopes = self.alibi_slopes.to(dtype)
        slopes = slopes[h] if slopes.dim() == 1 else slopes[b, h]  # one slope per query head (and batch item)
        return -slopes * (pos - key).abs()

    def __call__(self, s: torch.Tensor, b, h, pos, key) -> torch.Tensor:
        s = self.modded(s, b, h, pos, key)
        return s if self.alibi_slopes is None else s + self.alibi(b, h, pos, key, s.dtype)

    def dense(self, s: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Scaled logits s (B, Hq, Tq, Tk) of q (B, Hq, Tq, D) and k (B, Hkv, Tk, D), transformed."""
        if not self.positional:
            return self.cap(s)
        return self(s, *index_grid(q.size(0), q.size(1), q.size(-2), k.size(-2), q.device))  # (B, Hq, Tq, Tk)
