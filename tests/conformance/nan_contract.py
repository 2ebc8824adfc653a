"""The non-finite-input contract: a NaN in q reaches only its own output row; a NaN in key or value j reaches
exactly the rows that can see j (they turn non-finite, never silently finite) and never a row that cannot.

A backend that departs from it declares how (`Backend.nan_deviation`, one sentence); the suite then reports
the violation as an expected failure with that sentence instead of a failure, so it stays visible.
"""

from __future__ import annotations

import torch
from attnbench import Backend
from attnbench.conformance.reference import causal_mask
from attnbench.conformance.strategies import Case


def _poisoned(t: torch.Tensor, row: int) -> torch.Tensor:
    t = t.clone()
    t[..., row, 0] = float("nan")  # one element of one position, in every batch and head
    return t


def nan_contract(backend: Backend, case: Case, device: str) -> None:
    """NaN in q row 0, then in the last key, then in the last value (the future of every other row)."""
    q, k, v = case.tensors(device)
    clean = backend(q, k, v, causal=case.causal, scale=case.scale)  # (B, H, Tq, D)
    if case.causal:
        sees_last = causal_mask(case.Tq, case.Tk, device)[:, -1]  # (Tq,) rows that see the last key
    else:
        sees_last = torch.ones(case.Tq, dtype=torch.bool, device=device)
    first_row = torch.zeros(case.Tq, dtype=torch.bool, device=device)
    first_row[0] = True
    trials = (("q row 0", (_poisoned(q, 0), k, v), first_row), ("the last key", (q, _poisoned(k, -1), v), sees_last))
    trials += (("the last value", (q, k, _poisoned(v, -1)), sees_last),)
    for where, inputs, reached in trials:
        out = backend(*inputs, causal=case.causal, scale=case.scale)  # (B, H, Tq, D)
        finite_rows = torch.isfinite(out).all(dim=-1)  # (B, H, Tq)
        at = f"[{backend.name} on {device}: NaN in {where}, {case}]"
        if finite_rows[..., reached].any():
            raise AssertionError(f"a row that sees the NaN came out finite (the NaN was hidden) {at}")
        if not finite_rows[..., ~reached].all():
            raise AssertionError(f"the NaN reached a row that cannot see it {at}")
        torch.testing.assert_close(out[..., ~reached, :], clean[..., ~reached, :], msg=lambda m, at=at: f"{m} {at}")
