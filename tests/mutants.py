"""Deliberately broken attention backends, each a bug seen in real attention code.

Test assets only: they are never registered (tests wrap them in an unregistered attnbench.Backend). The
mutation kill test (tests/test_mutation_kill.py) runs every named property against each and requires
each one to be caught by at least one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from attnbench.contract import NAN_IN_FUTURE_VALUE, NanDeparture

KILL_ROW = "kill_row"  # the user property test_mutation_kill.py records a mutant's verdicts under (JSON)


def kill_table(rows: list[dict[str, str]]) -> str:
    """The table of verdicts: one row per mutant ({"mutant": name, property: "x" | "E" | "." | "-" | " ", ...});
    "-" marks a property that needs a feature the mutant does not declare, " " one that was not run."""
    names = [k for k in rows[0] if k not in ("mutant", "order")]
    width = max(len(r["mutant"]) for r in rows)
    lines = [" " * width + "  " + " ".join(f"{i:>2}" for i in range(len(names))) + "  killed by"]
    for r in rows:
        marks = " ".join(f"{r[p]:>2}" for p in names)
        ran = sum(r[p] in "xE." for p in names)
        lines.append(f"{r['mutant']:<{width}}  {marks}  {sum(r[p] in 'xE' for p in names)}/{ran}")
    lines.append("properties: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    killed = sum(any(r[p] in "xE" for p in names) for r in rows)
    lines.append(f"killed {killed}/{len(rows)} mutants ({100 * killed / len(rows):.0f}%)")
    return "\n".join(lines)


@dataclass(frozen=True)
class Mutant:
    name: str
    fn: Callable  # the backend contract: fn(q, k, v, *, causal=True, dropout_p=0.0, scale=None) -> out
    bug: str  # one line: what is wrong
    features: frozenset[str] = frozenset()  # contract features it declares (and the feature properties test)
    # Built on weights @ values like `manual`, a mutant spreads a NaN in a future value as `manual` does, and says
    # so: the NaN contract excuses that departure and no other, so it kills a mutant only for an undeclared one.
    nan_departure: NanDeparture | None = NAN_IN_FUTURE_VALUE
    batch_invariant: bool = False  # declared, the batch_invariance property holds it to that
    varlen: Callable | None = None  # its own ragged-batch implementation (Backend.varlen), None: the default
    paged: Callable | None = None  # its own paged-cache implementation (Backend.paged), None: the default


def one_bug(attend: Callable, bug: str, what: str, features: frozenset[str]) -> Mutant:
    """The Mutant named `bug` that runs attend(q, k, v, **kwargs, bug=bug): a formula with a hook per bug."""

    def fn(q, k, v, **kwargs):
        return attend(q, k, v, **kwargs, bug=bug)

    return Mutant(bug, fn, what, features=features)


def _attend(q, k, v, *, causal, dropout_p, scale, mask_fn=None, scale_fn=None, softmax_dim=-1, after=None):
    """The manual formula with one hook per place a bug can hide. q: (B, H, Tq, D); k, v: (B, H, Tk, D)."""
    tq, tk = q.size(-2), k.size(-2)
    s = scale if scale is not None else (scale_fn(q) if scale_fn else 1.0 / math.sqrt(q.size(-1)))
    att = (q @ k.transpose(-2, -1)) * s  # (B, H, Tq, Tk)
    if causal:
        mask = mask_fn(tq, tk, q.device) if mask_fn else torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
        att = att.masked_fill(~mask.to(q.device), float("-inf"))
    att = F.softmax(att, dim=softmax_dim)
    if after:
        att = after(att, dropout_p)
    elif dropout_p > 0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, H, Tq, D)


def no_causal_mask(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _attend(q, k, v, causal=False, dropout_p=dropout_p, scale=scale)


def mask_sees_next(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    def mask(tq, tk, device):
        return torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq + 1)  # diagonal + 1: one future key

    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, mask_fn=mask)


def mask_hides_self(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    def mask(tq, tk, device):
        return torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq - 1)  # strict: a token never sees itself

    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, mask_fn=mask)


def scale_by_model_width(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    def width_scale(q):
        return 1.0 / math.sqrt(q.size(1) * q.size(-1))  # 1/sqrt(C) with C = H * D instead of 1/sqrt(D)

    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, scale_fn=width_scale)


def softmax_over_queries(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, softmax_dim=-2)


def dropout_always_on(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    def drop(att, p):
        return F.dropout(att, p=max(p, 0.1))  # training=True by default: F.dropout ignores module.eval()

    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, after=drop)


def top_left_causal(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    def mask(tq, tk, device):
        return torch.ones(tq, tk, dtype=torch.bool).tril()  # query i sees keys 0..i, even when Tq < Tk

    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, mask_fn=mask)


def heads_without_transpose(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    B, H, T, D = q.shape
    out = _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)  # (B, H, T, D)
    return out.reshape(B, T, H, D).transpose(1, 2)  # memory read as if (B, T, H, D): heads and time mixed


def no_scale(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=1.0 if scale is None else scale)


def ignores_explicit_scale(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _attend(q, k, v, causal=causal, dropout_p=dropout_p, scale=None)


def mask_after_softmax(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    def zero_future(att, p):
        tq, tk = att.shape[-2:]
        keep = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq).to(att.device)
        return att.masked_fill(~keep, 0.0)  # rows no longer sum to 1

    return _attend(q, k, v, causal=False, dropout_p=dropout_p, scale=scale, after=zero_future)


def finite_mask_fill(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    B, H, tq, D = q.shape
    tk = k.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D) if scale is None else scale)  # (B, H, Tq, Tk)
    if causal:
        keep = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq).to(q.device)
        att = att.masked_fill(~keep, -1e4)  # "large negative" instead of -inf: leaks once logits reach 1e4
    return F.softmax(att, dim=-1) @ v


def no_max_subtraction(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    B, H, tq, D = q.shape
    tk = k.size(-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D) if scale is None else scale)  # (B, H, Tq, Tk)
    e = att.exp()  # overflows to inf once a logit passes ~88 (fp32): inf / inf = NaN
    if causal:
        e = e * torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq).to(q.device)
    return (e / e.sum(-1, keepdim=True)) @ v


CATALOGUE: list[Mutant] = [
    Mutant("no_causal_mask", no_causal_mask, "ignores causal=True: every query sees every key"),
    Mutant("mask_sees_next", mask_sees_next, "mask off by one: each query also sees the next key"),
    Mutant("mask_hides_self", mask_hides_self, "mask off by one: a query never sees its own key"),
    Mutant("scale_model_width", scale_by_model_width, "scales by 1/sqrt(H*D) (model width), not 1/sqrt(D)"),
    Mutant("softmax_wrong_axis", softmax_over_queries, "softmax over the query axis instead of the keys"),
    Mutant("dropout_in_eval", dropout_always_on, "applies dropout even when dropout_p == 0"),
    Mutant("top_left_causal", top_left_causal, "causal mask aligned top-left when Tq < Tk"),
    Mutant("heads_no_transpose", heads_without_transpose, "output re-assembled without the transpose"),
    Mutant("no_scale", no_scale, "forgets the 1/sqrt(D) scale"),
    Mutant("ignores_scale_arg", ignores_explicit_scale, "always uses 1/sqrt(D), ignoring an explicit scale"),
    Mutant("mask_after_softmax", mask_after_softmax, "zeroes future weights after the softmax: rows sum < 1"),
    Mutant("finite_mask_fill", finite_mask_fill, "masks with -1e4 instead of -inf"),
    Mutant("no_max_subtraction", no_max_subtraction, "softmax without subtracting the row max: overflows"),
]
