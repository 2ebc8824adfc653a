"""The non-finite-input contract: a NaN in q reaches only its own output row; a NaN in key or value j reaches
exactly the rows that can see j (they turn non-finite, never silently finite) and never a row that cannot.

A backend that departs from it declares how (`Backend.nan_departure`, an `attnbench.NanDeparture`: which inputs'
NaN it spreads or hides, and why). The contract then excuses those violations and no other: a backend declared
to spread a future value's NaN still fails for hiding a NaN in q. test_nan_contract reports a declared departure
it sees as an expected failure with the sentence, so it stays visible.

One departure belongs to the machine, not to a backend: on x86 CPUs with AMX, PyTorch's bfloat16 matmul (oneDNN's
brgemm kernel, uxlfoundation/oneDNN#5717, fixed upstream by oneDNN PR #5723) reads past the end of a row of its left
operand when the inner dimension is not a multiple of 32, so a NaN row of the attention weights also poisons the
row stored just before it. `matmul_leaks_nan_into_previous_row` probes this machine for it; where it leaks, a
bfloat16 case on the CPU may also show non-finite output in the row just before (in memory order) a row that sees
the NaN, and in no other row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from attnbench import Backend

from .core import conformance_property
from .reference import causal_mask
from .strategies import Case, cases


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
    """A copy of t laid out as t is (its strides: a clone of a strided view is contiguous, and another layout can
    take another matmul kernel whose rounding differs, which would read as the NaN changing other rows), with a
    NaN in one element of position `row`, in every batch and head."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device).copy_(t)
    out[..., row, 0] = float("nan")
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.testing.assert_close's verdict (its dtype-aware default tolerances), as a bool."""
    try:
        torch.testing.assert_close(a, b)
    except AssertionError:
        return False
    return True


@functools.cache
def matmul_leaks_nan_into_previous_row(dtype: torch.dtype, device: str) -> bool:
    """Whether this machine's `a @ b` in `dtype` on `device` lets a NaN row of `a` reach the output row before it
    (the oneDNN AMX bfloat16 defect above), probed on shapes that trigger it (inner dimension 17 to 35)."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return False
    for m, k in ((17, 17), (34, 34), (35, 35), (32, 33)):
        a = torch.ones(2, m, k, dtype=dtype)  # (batch, M, K)
        a[:, 1:] = float("nan")  # every row but the first
        if not torch.isfinite((a @ torch.ones(k, 16, dtype=dtype))[:, 0]).all():  # row 0 depends on row 0 only
            return True
    return False


def _row_before(rows: torch.Tensor) -> torch.Tensor:
    """(B, H, Tq) bool: the rows stored just before a True row, in the (B, H, Tq) memory order of the weights."""
    flat = rows.flatten()
    before = torch.zeros_like(flat)
    before[:-1] = flat[1:]
    return before.view(rows.shape)


def nan_violations(backend: Backend, case: Case, device: str) -> list[NanViolation]:
    """Every departure from the contract, declared or not: NaN in q row 0, then in the last key, then in the last
    value (the future of every other row)."""
    leaks = matmul_leaks_nan_into_previous_row(case.dtype, device)
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
        sees = reached.expand_as(finite_rows)  # (B, H, Tq)
        clear = ~(sees | _row_before(sees)) if leaks else ~sees  # rows the NaN must not reach (the machine's leak)
        if not finite_rows[clear].all():
            found.append(NanViolation("spreads", where, f"the NaN reached a row that cannot see it {at}"))
        elif not _close(out[clear], clean[clear]):
            found.append(NanViolation("spreads", where, f"the NaN changed a row that cannot see it {at}"))
    return found


@conformance_property(
    "nan_contract",
    "nan_contract",
    lambda d: cases(d),
    "a NaN reaches exactly the rows that see it",
    examples=lambda dtype: [],  # a poisoned row per example: drawn sizes only
)
def nan_contract(backend: Backend, case: Case, device: str) -> None:
    """The contract, less what the backend declares (Backend.nan_departure): the first other violation fails."""
    declared = backend.nan_departure
    for violation in nan_violations(backend, case, device):
        if declared is None or not declared.excuses(violation.kind, violation.where):
            raise AssertionError(violation.message)
