"""Causality at op level: the future never reaches the past (values, gradients, prefix runs), Tq < Tk included
(absolute positions: query i sits at Tk - Tq + i)."""

from __future__ import annotations

import torch
from attnbench import Backend

from .core import assert_within, conformance_property, forward_bound, leaf, mapped
from .strategies import Case, causal_cut_cases, with_cut


@conformance_property(
    "causal_future",
    "causality",
    causal_cut_cases,
    "future q/k/v never change the past",
    examples=mapped(with_cut),
)
def causal_future_invariance(backend: Backend, case: Case, device: str) -> None:
    """Changing q/k/v at absolute positions > t never changes the outputs of queries at positions <= t."""
    q, k, v = case.tensors(device)
    other = case.with_(seed=case.seed + 12345).tensors(device)
    rows = case.t - (case.Tk - case.Tq) + 1  # queries at absolute positions <= t
    q2, k2, v2 = case.tensors(device)  # same values and layout; the future is overwritten in place
    q2[..., rows:, :] = other[0][..., rows:, :]
    k2[..., case.t + 1 :, :] = other[1][..., case.t + 1 :, :]
    v2[..., case.t + 1 :, :] = other[2][..., case.t + 1 :, :]
    a = backend(q, k, v, causal=True, scale=case.scale)[..., :rows, :]
    b = backend(q2, k2, v2, causal=True, scale=case.scale)[..., :rows, :]
    # Exactly equal: masked keys get weight exactly 0, so the future cannot leak in even by one ulp.
    if not torch.equal(a, b):
        diff = (a.double() - b.double()).abs()
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"outputs at positions <= t={case.t} changed when the future changed: max diff {float(diff.max()):.3e} "
            f"at {idx} [{backend.name} on {device}: {case}]"
        )


@conformance_property(
    "causal_grad_zero",
    "causality",
    causal_cut_cases,
    "d out[<=t] / d in[>t] == 0 exactly",
    needs_backward=True,
    examples=mapped(with_cut),
)
def causal_grad_zero(backend: Backend, case: Case, device: str) -> None:
    """The gradient of outputs at positions <= t with respect to inputs at positions > t is exactly zero."""
    q, k, v = (leaf(t) for t in case.tensors(device))
    rows = case.t - (case.Tk - case.Tq) + 1
    out = backend(q, k, v, causal=True, scale=case.scale)[..., :rows, :]  # (B, H, rows, D)
    w = case.with_(seed=case.seed + 1, Tq=rows).upstream(device)  # random weights on the kept outputs
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), w, allow_unused=True)
    for name, g, start in (("dq", dq, rows), ("dk", dk, case.t + 1), ("dv", dv, case.t + 1)):
        future = g[..., start:, :] if g is not None else torch.zeros(0)
        if future.numel() and (future != 0).any():
            raise AssertionError(
                f"{name} at positions after t={case.t} is not zero (max |.| {float(future.abs().max()):.3e}): "
                f"outputs at <= t depend on the future [{backend.name} on {device}: {case}]"
            )


@conformance_property(
    "causal_prefix",
    "causality",
    causal_cut_cases,
    "prefix run == prefix of the full run",
    examples=mapped(with_cut),
)
def causal_prefix(backend: Backend, case: Case, device: str) -> None:
    """Running only the prefix (keys 0..t and the queries up to t) gives the prefix of the full run."""
    q, k, v = case.tensors(device)
    rows = case.t - (case.Tk - case.Tq) + 1
    full = backend(q, k, v, causal=True, scale=case.scale)[..., :rows, :]
    pq, pk, pv = q[..., :rows, :], k[..., : case.t + 1, :], v[..., : case.t + 1, :]
    prefix = backend(pq, pk, pv, causal=True, scale=case.scale)
    pcase = case.with_(Tq=rows, Tk=case.t + 1)
    ref, naive, atol = forward_bound(pcase, pq, pk, pv)
    # Each run is within (2 * max|naive_d - ref64| + atol_d) of ref64 by the pass rule, so the two differ by
    # at most twice that (triangle inequality).
    bound = 2.0 * (2.0 * float((naive.double() - ref).abs().max()) + atol)
    assert_within(
        f"prefix run vs the full run's prefix (t={case.t})",
        prefix,
        full,
        bound,
        f"[{backend.name} on {device}: {case}]",
    )
