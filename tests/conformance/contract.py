"""Contract checks: what every backend call must honour beyond computing the right numbers.

- output_contract: the output has q's dtype, shape (B, H, Tq, D) and device;
- inputs_unchanged: q, k, v and the upstream gradient hold the same values after forward and backward;
- call_independence: a call's result does not depend on earlier calls (shape A, then shape B, then A again:
  bit-identical forward and backward). B is the full prefill (Tq = Tk) of A's keys when A has Tq < Tk (a cache
  keyed by the key length goes stale), else 65 more queries and keys (a longer call, on another tile phase);
- deterministic: the same call twice is bit-identical in forward and backward. A backend that is
  nondeterministic on purpose (atomic adds in a backward, say) declares it (`Backend(..., nondeterministic=True)`
  or `register_backend(..., nondeterministic=True)`); the property then checks the two runs agree within rounding.
The upstream gradient comes in q's layout (contiguous, transposed or strided) in every gradient check.
"""

from __future__ import annotations

import torch
from attnbench import Backend

from .core import conformance_property, has_backward, two_run_bounds
from .strategies import Case, cases


def _run(backend: Backend, case: Case, device: str, backward: bool) -> tuple[torch.Tensor, ...]:
    """(out,) or (out, dq, dk, dv) for the case's tensors and upstream gradient."""
    q, k, v = (t.requires_grad_(backward) for t in case.tensors(device))
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    if not backward:
        return (out.detach(),)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), case.upstream(device)))


def _ctx(backend: Backend, case: Case, device: str) -> str:
    return f"[{backend.name} on {device}: {case}]"


@conformance_property("output_contract", "contract", lambda d: cases(d), "out has q's dtype, shape and device")
def output_contract(backend: Backend, case: Case, device: str) -> None:
    """out has q's dtype, shape and device."""
    q, k, v = case.tensors(device)
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    want = (q.dtype, (case.B, case.H, case.Tq, case.D), torch.device(device).type)
    got = (out.dtype, tuple(out.shape), out.device.type)
    if got != want:
        raise AssertionError(f"output (dtype, shape, device) {got} != q's {want} {_ctx(backend, case, device)}")


@conformance_property("inputs_unchanged", "contract", lambda d: cases(d), "q, k, v and dO never written to")
def inputs_unchanged(backend: Backend, case: Case, device: str) -> None:
    """q, k, v (forward) and the upstream gradient (backward) are never written to."""
    q, k, v = (t.requires_grad_(has_backward(backend, device)) for t in case.tensors(device))
    dout = case.upstream(device)
    before = {name: t.detach().clone() for name, t in (("q", q), ("k", k), ("v", v), ("dout", dout))}
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    if q.requires_grad:
        torch.autograd.grad(out, (q, k, v), dout)
    for name, t in (("q", q), ("k", k), ("v", v), ("dout", dout)):
        if not torch.equal(t.detach(), before[name]):
            changed = int((t.detach() != before[name]).sum())
            raise AssertionError(
                f"{name} was modified in place ({changed} elements changed) {_ctx(backend, case, device)}"
            )


def _bit_identical(what: str, first, second, names, ctx: str) -> None:
    for name, a, b in zip(names, first, second, strict=False):
        if not torch.equal(a, b):
            diff = float((a.double() - b.double()).abs().nan_to_num(float("inf")).max())
            raise AssertionError(f"{what}: {name} not bit-identical (max diff {diff:.3e}) {ctx}")


NAMES = ("out", "dq", "dk", "dv")


@conformance_property("call_independence", "contract", lambda d: cases(d), "A, B, A: A bit-identical")
def call_independence(backend: Backend, case: Case, device: str) -> None:
    """Shape A, then shape B (module docstring), then A again: A bit-identical."""
    backward = has_backward(backend, device)
    longer = case.with_(Tq=case.Tq + 65, Tk=case.Tk + 65)
    other = (case.with_(Tq=case.Tk) if case.Tq < case.Tk else longer).with_(seed=case.seed + 3)
    first = _run(backend, case, device, backward)
    _run(backend, other, device, backward)
    again = _run(backend, case, device, backward)
    ctx = f"(after a call with Tq={other.Tq}, Tk={other.Tk}) {_ctx(backend, case, device)}"
    _bit_identical("a call depends on an earlier call", first, again, NAMES, ctx)


@conformance_property("deterministic", "contract", lambda d: cases(d), "the same call twice: bit-identical fwd and bwd")
def deterministic(backend: Backend, case: Case, device: str) -> None:
    """The same call twice is bit-identical in forward and backward (within rounding, if declared otherwise)."""
    backward = has_backward(backend, device)
    first, again = _run(backend, case, device, backward), _run(backend, case, device, backward)
    ctx = _ctx(backend, case, device)
    if not backend.nondeterministic:
        return _bit_identical("two identical calls differ", first, again, NAMES, ctx)
    q, k, v = case.tensors(device)
    bounds = two_run_bounds(case, q, k, v, case.upstream(device))
    for name, a, b in zip(NAMES, first, again, strict=False):
        err = float((a.double() - b.double()).abs().max())
        if not err <= bounds[name]:
            raise AssertionError(f"two identical calls differ beyond rounding: {name} by {err:.3e} {ctx}")
