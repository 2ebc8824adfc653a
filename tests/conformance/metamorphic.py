"""Metamorphic relations: properties that compare a backend with itself, so they need no reference at any size.

Each relation runs the backend twice on related inputs whose exact results are related exactly; the two runs
may differ only by rounding, bounded by atol_d (reference.rounding_noise) of each run:
- chunked_prefill: queries split into pieces, each run against its own prefix of keys, equal the full run;
- decode_chain: single-token decode steps (Tq = 1 against the keys up to it) equal the last rows of prefill;
- key_shift: adding one vector c to every key leaves out, dq, dk, dv unchanged (each row's logits shift by
  the constant q.c, which softmax ignores, and the rows of dS sum to zero);
- kv_permutation: permuting (k, v) pairs together leaves non-causal attention unchanged (and permutes dk, dv).
"""

from __future__ import annotations

import torch
from attnbench import Backend

from .core import assert_within, boundary_examples, conformance_property, has_backward, rule_dtype, two_run_bounds
from .reference import abs_logit_bound, rounding_noise
from .strategies import Case, cases

DECODE_STEPS = 4  # single-token steps checked per example (the last rows of the prefill)


def _noise(case: Case, q, k, v) -> float:
    """atol_d of one forward run: two runs of the same exact value differ by at most twice this."""
    a = abs_logit_bound(q, k, case.scale)
    return rounding_noise(rule_dtype(case.dtype), float(v.abs().max()), a, n_terms=case.Tk)


def _grads(backend: Backend, case: Case, q, k, v, dout):
    xs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = backend(*xs, causal=case.causal, scale=case.scale)
    return (out.detach(), *torch.autograd.grad(out, xs, dout))


def _pieces(case: Case) -> list[tuple[int, int]]:
    """Query pieces [a, b) for chunked prefill: cuts at a 64-row tile boundary and at a drawn row."""
    g = torch.Generator().manual_seed(case.seed)
    cuts = {int(torch.randint(1, case.Tq, (), generator=g))} | ({64} if case.Tq > 64 else set())
    edges = [0, *sorted(cuts), case.Tq]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _causal_examples(dtype):
    return [c.with_(causal=True, Tq=max(c.Tq, 2)) for c in boundary_examples(dtype)]


def _non_causal_examples(dtype):
    return [c.with_(causal=False) for c in boundary_examples(dtype)]


@conformance_property(
    "chunked_prefill",
    "metamorphic",
    lambda d: cases(d, causal=True, min_tq=2),
    "query pieces against their key prefixes == the full run",
    examples=_causal_examples,
)
def chunked_prefill(backend: Backend, case: Case, device: str) -> None:
    """Causal queries split into pieces, each against its own prefix of keys, give the full run's rows."""
    q, k, v = case.tensors(device)
    off = case.Tk - case.Tq  # query i sits at absolute position off + i
    full = backend(q, k, v, causal=True, scale=case.scale)  # (B, H, Tq, D)
    pieces = _pieces(case)
    parts = [backend(q[..., a:b, :], k[..., : off + b, :], v[..., : off + b, :], causal=True, scale=case.scale)
             for a, b in pieces]  # fmt: skip
    ctx = f"(pieces {pieces}) [{backend.name} on {device}: {case}]"
    assert_within("chunked prefill: out", torch.cat(parts, dim=-2), full, 2.0 * _noise(case, q, k, v), ctx)


@conformance_property(
    "decode_chain",
    "metamorphic",
    lambda d: cases(d, causal=True),
    "single-token decode steps == the prefill's last rows",
    examples=_causal_examples,
)
def decode_chain(backend: Backend, case: Case, device: str) -> None:
    """Single-token decode steps (query i alone against keys 0 .. its position) equal the prefill's last rows."""
    q, k, v = case.tensors(device)
    off = case.Tk - case.Tq
    full = backend(q, k, v, causal=True, scale=case.scale)  # (B, H, Tq, D)
    first = max(0, case.Tq - DECODE_STEPS)
    steps = [backend(q[..., i : i + 1, :], k[..., : off + i + 1, :], v[..., : off + i + 1, :], causal=True,
                     scale=case.scale) for i in range(first, case.Tq)]  # fmt: skip
    ctx = f"(rows {first}..{case.Tq - 1}) [{backend.name} on {device}: {case}]"
    assert_within("decode: out", torch.cat(steps, dim=-2), full[..., first:, :], 2.0 * _noise(case, q, k, v), ctx)


@conformance_property("key_shift", "metamorphic", lambda d: cases(d), "k + c leaves out and grads unchanged")
def key_shift(backend: Backend, case: Case, device: str) -> None:
    """k + c (one vector c for every key) leaves out, dq, dk and dv unchanged."""
    q, k, v = case.tensors(device)
    g = torch.Generator().manual_seed(case.seed + 7)
    c = (torch.randn(case.B, case.H, 1, case.D, generator=g, dtype=torch.float64) * case.magnitude).to(device, k.dtype)
    shifted = k + c  # (B, H, Tk, D) contiguous
    ctx = f"(k + c, |c| ~ {case.magnitude}) [{backend.name} on {device}: {case}]"
    big = max(_noise(case, q, k, v), _noise(case, q, shifted, v))
    if not has_backward(backend, device):
        a = backend(q, k, v, causal=case.causal, scale=case.scale)
        b = backend(q, shifted, v, causal=case.causal, scale=case.scale)
        return assert_within("key shift: out", b, a, 2.0 * big, ctx)
    dout = case.upstream(device)
    base, moved = _grads(backend, case, q, k, v, dout), _grads(backend, case, q, shifted, v, dout)
    bounds = two_run_bounds(case, q, k, v, dout)
    moved_bounds = two_run_bounds(case, q, shifted, v, dout)
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        assert_within(f"key shift: {name}", moved[i], base[i], max(bounds[name], moved_bounds[name]), ctx)


@conformance_property(
    "kv_permutation",
    "metamorphic",
    lambda d: cases(d, causal=False),
    "permuting (k, v) pairs: non-causal out unchanged",
    examples=_non_causal_examples,
)
def kv_permutation(backend: Backend, case: Case, device: str) -> None:
    """Non-causal: permuting the (k, v) pairs leaves out and dq unchanged and permutes dk and dv alike."""
    q, k, v = case.tensors(device)
    perm = torch.randperm(case.Tk, generator=torch.Generator().manual_seed(case.seed)).to(device)
    pk, pv = k[..., perm, :], v[..., perm, :]
    ctx = f"(keys permuted) [{backend.name} on {device}: {case}]"
    if not has_backward(backend, device):
        a = backend(q, k, v, causal=False, scale=case.scale)
        b = backend(q, pk, pv, causal=False, scale=case.scale)
        return assert_within("kv permutation: out", b, a, 2.0 * _noise(case, q, k, v), ctx)
    dout = case.upstream(device)
    base, moved = _grads(backend, case, q, k, v, dout), _grads(backend, case, q, pk, pv, dout)
    bounds = two_run_bounds(case, q, k, v, dout)
    expected = (base[0], base[1], base[2][..., perm, :], base[3][..., perm, :])
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        assert_within(f"kv permutation: {name}", moved[i], expected[i], bounds[name], ctx)
