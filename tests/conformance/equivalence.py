"""Equivalence: the output and the gradients match a float64 reference by the pass rule.

Pass rule (reference.py): max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d for x in out, dq, dk, dv, where
naive_d is the same formula in the dtype the backend computes in (core.rule_dtype) and atol_d its rounding noise.
"""

from __future__ import annotations

import torch
from attnbench import Backend

from .core import conformance_property, forward_bound, has_backward, leaf, mapped, rule_dtype, worst
from .reference import (
    RuleResult,
    abs_logit_bound,
    check_rule,
    grad_magnitudes,
    keep_rows_,
    rounding_noise,
    row_sampled_attention,
    sample_rows,
    visible_mask,
)
from .strategies import Case, cases


@conformance_property("equivalence", "equivalence", lambda d: cases(d), "fwd + grads vs float64 by the pass rule")
def equivalence(backend: Backend, case: Case, device: str) -> RuleResult:
    """Output and grads wrt q, k, v against float64 by the pass rule, on sampled query rows.

    The row-sampled reference (reference.row_sampled_attention): the exact float64 output on a few query rows
    (tile-boundary rows first), and exact gradients for a random upstream gradient, laid out like q, that is
    nonzero on those rows only; dq is then checked on every row and dk, dv on every key. For Tq <= 16 every
    row is kept: the full reference. A backend with no backward on `device` has its output checked alone."""
    with_grads = has_backward(backend, device)
    q, k, v = (leaf(t) if with_grads else t for t in case.tensors(device))
    rows = sample_rows(case.Tq, case.seed)
    dout = keep_rows_(case.upstream(device), rows)
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    grads = torch.autograd.grad(out, (q, k, v), dout) if with_grads else ()
    kw = dict(causal=case.causal, scale=case.scale)
    refs = row_sampled_attention(q, k, v, dout, rows, dtype=torch.float64, **kw)
    naives = row_sampled_attention(q, k, v, dout, rows, dtype=rule_dtype(case.dtype), **kw)
    q_rows, dout_rows = q[..., rows, :], dout[..., rows, :]
    a = abs_logit_bound(q_rows, k, case.scale)
    vis = visible_mask(case.Tq, case.Tk, case.causal, device)[rows.to(device)]
    mags = grad_magnitudes(q_rows, k, v, dout_rows, scale=case.scale, visible=vis)
    ctx = f"[{backend.name} on {device}: {case}; sampled rows {rows.tolist()}]"
    results = []
    checked = [("out", out.detach()[..., rows.to(device), :], case.Tk)]
    if with_grads:
        checked += [("dq", grads[0], case.Tk), ("dk", grads[1], len(rows)), ("dv", grads[2], len(rows))]
    # Pass rule, per tensor: max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d (reference.py).
    for i, (name, x, n) in enumerate(checked):
        atol = rounding_noise(rule_dtype(case.dtype), mags[name], a, n_terms=n)
        results.append(check_rule(name, x, refs[i], naives[i], atol, ctx))
    return worst(results)


@conformance_property(
    "explicit_scale",
    "equivalence",
    lambda d: cases(d, explicit_scale=True),
    "explicit scale honoured",
    examples=mapped(lambda c: c.with_(scale=0.37)),
)
def explicit_scale(backend: Backend, case: Case, device: str) -> RuleResult:
    """An explicit `scale` (not 1/sqrt(D)) is what the softmax uses: forward against float64 by the rule."""
    q, k, v = case.tensors(device)
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    ref, naive, atol = forward_bound(case, q, k, v)
    # Pass rule: max|out - ref64| <= 2 * max|naive_d - ref64| + atol_d
    return check_rule("out", out, ref, naive, atol, f"[{backend.name} on {device}: {case}]")


@conformance_property(
    "single_token",
    "equivalence",
    lambda d: cases(d).map(lambda c: c.with_(Tq=1)),
    "Tq = 1 against any Tk",
    examples=mapped(lambda c: c.with_(Tq=1)),
)
def single_token(backend: Backend, case: Case, device: str) -> RuleResult:
    """Tq = 1 (decoding one token against Tk >= 1 keys, Tk = 1 included): equivalence holds there too."""
    return equivalence(backend, case, device)
