"""Structural properties: convex combinations, batch/head independence, dropout's expected value and its absence
at p = 0, finite results with huge logits."""

from __future__ import annotations

import torch
from attnbench import Backend

from .core import assert_within, boundary_examples, conformance_property, forward_bound, has_backward, leaf, rule_dtype
from .reference import abs_logit_bound, reference_weights, rounding_noise
from .strategies import HUGE_MAGNITUDES, Case, cases

FLOATS = (torch.float32, torch.float64)  # dtypes where a statistical or exact property is meaningful


def _no_bf16(dtypes):
    return [d for d in dtypes if d != torch.bfloat16] or list(dtypes)


def _huge_examples(dtype):
    return [c.with_(magnitude=HUGE_MAGNITUDES[0]) for c in boundary_examples(_no_bf16([dtype])[0])]


@conformance_property("convex", "structure", lambda d: cases(d), "rows are convex combinations of values")
def convex_combination(backend: Backend, case: Case, device: str) -> None:
    """Each output row is a convex combination of the visible value rows; all-equal values come back as is."""
    q, k, v = case.tensors(device)
    out = backend(q, k, v, causal=case.causal, scale=case.scale).double()  # (B, H, Tq, D)
    lo, hi = visible_value_range(v.double(), case)  # (B, H, Tq, D) each
    atol = rounding_noise(
        rule_dtype(case.dtype), float(v.abs().max()), abs_logit_bound(q, k, case.scale), n_terms=case.Tk
    )
    outside = (out < lo - atol) | (out > hi + atol) | ~torch.isfinite(out)
    if outside.any():
        idx = tuple(int(i[0]) for i in torch.nonzero(outside, as_tuple=True))
        raise AssertionError(
            f"output {float(out[idx]):.6e} at {idx} is outside the visible values' range "
            f"[{float(lo[idx]):.6e}, {float(hi[idx]):.6e}] (+-{atol:.2e}) [{backend.name} on {device}: {case}]"
        )
    c = v[..., :1, :].expand_as(v).contiguous()  # every key carries the same value row
    same = backend(q, k, c, causal=case.causal, scale=case.scale).double()
    err = float((same - c.double()[..., :1, :]).abs().max()) if torch.isfinite(same).all() else float("inf")
    if not err <= atol:
        raise AssertionError(
            f"all-equal values not returned: max error {err:.3e} > {atol:.3e} [{backend.name} on {device}: {case}]"
        )


def visible_value_range(v64: torch.Tensor, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest visible value per query row and feature: (B, H, Tq, D) each. Causal rows see a key
    prefix, so a running min/max over keys answers in O(Tk D), never materializing (Tq, Tk, D)."""
    if case.causal:
        off = case.Tk - case.Tq  # query i sees keys 0 .. off + i
        return v64.cummin(dim=-2).values[..., off:, :], v64.cummax(dim=-2).values[..., off:, :]
    shape = (*v64.shape[:2], case.Tq, v64.size(-1))
    return v64.amin(dim=-2, keepdim=True).expand(shape), v64.amax(dim=-2, keepdim=True).expand(shape)


@conformance_property("permutation", "structure", lambda d: cases(d), "batch/head permutation equivariance")
def permutation_equivariance(backend: Backend, case: Case, device: str) -> None:
    """Batch items and heads are independent: permuting them in the input permutes the output."""
    q, k, v = case.tensors(device)
    g = torch.Generator().manual_seed(case.seed)
    pb, ph = torch.randperm(case.B, generator=g), torch.randperm(case.H, generator=g)

    def perm(t):
        return t[pb.to(t.device)][:, ph.to(t.device)]

    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    out_p = backend(perm(q), perm(k), perm(v), causal=case.causal, scale=case.scale)
    ref, naive, atol = forward_bound(case, q, k, v)
    bound = 2.0 * (2.0 * float((naive.double() - ref).abs().max()) + atol)  # two runs, each within the rule
    what = f"permuting batch {pb.tolist()} / heads {ph.tolist()}: the output vs the permuted output"
    assert_within(what, out_p, perm(out), bound, f"[{backend.name} on {device}: {case}]")


DROPOUT_COPIES = 512  # independent dropout draws of one small problem, stacked along the batch


@conformance_property(
    "dropout_mean",
    "structure",
    lambda d: cases(d, max_t=8, max_b=1, max_h=2, max_d=8, kernel=False),
    "E[dropout out] = out",
    dtypes=FLOATS,
    uses_dropout=True,
    examples=lambda dtype: [],  # 512 dropout draws per example: toy sizes only
)
def dropout_expected_value(backend: Backend, case: Case, device: str) -> None:
    """With dropout_p = p in training, E[out] is the no-dropout output (and dropout does change it)."""
    p = (0.1, 0.5)[case.seed % 2]
    q, k, v = (t.repeat(DROPOUT_COPIES, 1, 1, 1) for t in case.tensors(device))  # (N, H, T, D), N draws
    torch.manual_seed(case.seed)
    out = backend(q, k, v, causal=case.causal, dropout_p=p, scale=case.scale).double()
    mean = out.mean(dim=0)  # (H, Tq, D)
    q1, k1, v1 = (t[:1].double() for t in (q, k, v))
    P = reference_weights(q1, k1, causal=case.causal, scale=case.scale)[0]  # (H, Tq, Tk)
    ref = (P @ v1[0]).double()  # (H, Tq, D)
    # out_d = sum_j P_j m_j v_jd / (1 - p), m_j ~ Bernoulli(1 - p): Var = sum_j P_j^2 v_jd^2 p / (1 - p).
    var = (P**2) @ (v1[0] ** 2) * (p / (1 - p))  # (H, Tq, D)
    se = (var / DROPOUT_COPIES).sqrt()
    a1 = abs_logit_bound(q1, k1, case.scale)
    atol = rounding_noise(rule_dtype(case.dtype), float(v1.abs().max()), a1, n_terms=case.Tk)
    z = 6.0  # a 6-sigma band: a false alarm once in ~5e8 elements, a real bias of a few percent is caught
    bad = (mean - ref).abs() > z * se + atol
    if bad.any():
        idx = tuple(int(i[0]) for i in torch.nonzero(bad, as_tuple=True))
        raise AssertionError(
            f"dropout p={p}: mean over {DROPOUT_COPIES} draws {float(mean[idx]):.5f} != expected "
            f"{float(ref[idx]):.5f} (+- {z} * se {float(se[idx]):.2e}) at {idx} [{backend.name} on {device}: {case}]"
        )
    if torch.equal(out, out[:1].expand_as(out)):
        raise AssertionError(f"dropout p={p} changed nothing: every draw identical [{backend.name} on {device}]")


@conformance_property("dropout_off", "structure", lambda d: cases(d), "dropout_p = 0 is deterministic")
def dropout_off_when_zero(backend: Backend, case: Case, device: str) -> None:
    """dropout_p = 0 (eval) is deterministic: two calls with different RNG states agree bit for bit."""
    q, k, v = case.tensors(device)
    torch.manual_seed(case.seed)
    a = backend(q, k, v, causal=case.causal, dropout_p=0.0, scale=case.scale)
    torch.manual_seed(case.seed + 1)
    b = backend(q, k, v, causal=case.causal, dropout_p=0.0, scale=case.scale)
    if not torch.equal(a, b):
        raise AssertionError(f"dropout_p=0 gave two different outputs [{backend.name} on {device}: {case}]")


@conformance_property(
    "huge_logits",
    "structure",
    lambda d: cases(_no_bf16(d), magnitudes=HUGE_MAGNITUDES),
    "no NaN with logits up to 1e6",
    examples=_huge_examples,
)
def no_nan_huge_logits(backend: Backend, case: Case, device: str) -> None:
    """Logits of 1e4 .. 1e6: output and grads stay finite and the output within the visible values (the output
    alone where the backend has no backward on `device`)."""
    with_grads = has_backward(backend, device)
    q, k, v = (leaf(t) if with_grads else t for t in case.tensors(device))
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    grads = torch.autograd.grad(out, (q, k, v), case.upstream(device)) if with_grads else ()
    for name, t in zip(("out", "dq", "dk", "dv")[: 1 + len(grads)], (out, *grads), strict=True):
        if not torch.isfinite(t).all():
            raise AssertionError(f"{name} has NaN/inf with huge logits [{backend.name} on {device}: {case}]")
    convex_combination(backend, case, device)
