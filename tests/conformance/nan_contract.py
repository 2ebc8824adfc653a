"""The non-finite-input contract: a NaN in q reaches only its own output row; a NaN in key or value j reaches
exactly the rows that can see j (they turn non-finite, never silently finite) and never a row that cannot.

A backend that departs from it declares how (`Backend.nan_deviation`, an `attnbench.NanDeparture`: which inputs'
NaN it spreads or hides, and why). The contract then excuses those violations and no other: a backend declared
to spread a future value's NaN still fails for hiding a NaN in q. test_nan_contract reports a declared departure
it sees as an expected failure with the sentence, so it stays visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from attnbench import Backend
from attnbench.conformance.reference import causal_mask
from attnbench.conformance.strategies import Case


def showcase(dtype: torch.dtype) -> Case:
    """The small causal case that test_nan_contract shows a declared departure on: Tk < 16, where PyTorch's CPU
    flash kernel hides a NaN in q."""
    return Case(B=1, H=2, Tq=8, Tk=8, D=8, dtype=dtype, causal=True, magnitude=1.0, layout="contiguous", seed=0)


@dataclass(frozen=True)
class NanViolation:
    kind: str  # "spreads": the NaN reached a row that cannot see it; "hides": a row that sees it came out finite
    where: str  # the poisoned input, one of attnbench.registry.NAN_INPUTS
    message: str


def _poisoned(t: torch.Tensor, row: int) -> torch.Tensor:
    t = t.clone()
    t[..., row, 0] = float("nan")  # one element of one position, in every batch and head
    return t


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.testing.assert_close's verdict (its dtype-aware default tolerances), as a bool."""
    try:
        torch.testing.assert_close(a, b)
    except AssertionError:
        return False
    return True


def nan_violations(backend: Backend, case: Case, device: str) -> list[NanViolation]:
    """Every departure from the contract, declared or not: NaN in q row 0, then in the last key, then in the last
    value (the future of every other row)."""
    q, k, v = case.tensors(device)
    clean = backend(q, k, v, causal=case.causal, scale=case.scale)  # (B, H, Tq, D)
    if case.causal:
        sees_last = causal_mask(case.Tq, case.Tk, device)[:, -1]  # (Tq,) rows that see the last key
    else:
        sees_last = torch.ones(case.Tq, dtype=torch.bool, device=device)
    first_row = torch.zeros(case.Tq, dtype=torch.bool, device=device)
    first_row[0] = True
    trials = (("q", (_poisoned(q, 0), k, v), first_row), ("key", (q, _poisoned(k, -1), v), sees_last))
    trials += (("value", (q, k, _poisoned(v, -1)), sees_last),)
    found = []
    for where, inputs, reached in trials:
        out = backend(*inputs, causal=case.causal, scale=case.scale)  # (B, H, Tq, D)
        finite_rows = torch.isfinite(out).all(dim=-1)  # (B, H, Tq)
        at = f"[{backend.name} on {device}: NaN in {where}, {case}]"
        if finite_rows[..., reached].any():
            found.append(NanViolation("hides", where, f"a row that sees the NaN came out finite {at}"))
        if not finite_rows[..., ~reached].all():
            found.append(NanViolation("spreads", where, f"the NaN reached a row that cannot see it {at}"))
        elif not _close(out[..., ~reached, :], clean[..., ~reached, :]):
            found.append(NanViolation("spreads", where, f"the NaN changed a row that cannot see it {at}"))
    return found


def nan_contract(backend: Backend, case: Case, device: str) -> None:
    """The contract, less what the backend declares (Backend.nan_deviation): the first other violation fails."""
    declared = backend.nan_deviation
    for violation in nan_violations(backend, case, device):
        if declared is None or not declared.excuses(violation.kind, violation.where):
            raise AssertionError(violation.message)
