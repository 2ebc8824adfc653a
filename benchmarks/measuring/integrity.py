"""The integrity layer: a timed row stands only if the timed call did the work it was timed for.

Kernels have been caught returning cached results, skipping work on repeated inputs and computing on a side
stream the timer never waited for. Against each:
- Inputs change between calls: before every timed call the input tensors are refilled in place from a pool
  of distinct sets (same memory, new values), so no result of an earlier call is right for the next one.
- After timing, the same timed call runs once more on fresh values it has never seen (again in the same
  memory, so a cache keyed by pointer or by call count answers wrongly), and its output (and dq, dk, dv for
  fwd+bwd) is checked against the float64 reference by the conformance suite's pass rule. On CUDA the freed
  memory is poisoned with NaN first, so an output left unwritten cannot pass by holding the previous result.
- A time below what the roofline allows is impossible: the warm median may not beat the compute roof, nor
  the cold median the full roofline, by more than IMPOSSIBLE_FRACTION (a side stream's work, or a cache hit,
  is orders of magnitude faster than that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from attnbench.conformance.reference import (
    abs_logit_bound,
    attention_formula,
    check_rule,
    grad_magnitudes,
    rounding_noise,
)

from .measure import attention_inputs
from .roofline import Roofline

POOL_SIZE = 3  # distinct input sets the timed calls cycle through: consecutive calls never see the same values
# A measured time may beat the roofline by this factor before it is called impossible. The roofs are measured on
# the machine (a busy one measures them low; honest kernels reach 0.75 of the matmul peak here), and a faked
# time is orders of magnitude faster, so the margin is wide.
IMPOSSIBLE_FRACTION = 0.25
CHECK_SCORE_BYTES = 2**28  # float64 score bytes one reference check may hold: beyond, a random subset of heads
FRESH_SEED = 10_000  # seeds of the post-timing inputs: far from the pool's, so never a timed set


@dataclass
class LiveInputs:
    """The tensors a timed call reads, q: (B, H, Tq, D), k, v: (B, H, Tk, D), do like q, and the pool of
    distinct sets that `refill` copies into them in place before each call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor
    pool: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    refills: int = 0

    @classmethod
    def create(cls, B, H, Tq, Tk, D, device, dtype, *, requires_grad: bool, pool_size: int = POOL_SIZE):
        live = attention_inputs(B, H, Tk, D, device, dtype, requires_grad=requires_grad, Tq=Tq)
        pool = [
            attention_inputs(B, H, Tk, D, device, dtype, requires_grad=False, Tq=Tq, seed=s + 1)
            for s in range(pool_size)
        ]
        return cls(*live, pool=pool)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.q, self.k, self.v, self.do

    @torch.no_grad()
    def write(self, values: Sequence[torch.Tensor]) -> None:
        for live, new in zip(self.tensors, values, strict=True):
            live.copy_(new)

    def refill(self) -> None:
        """The next pool set into the live tensors (outside any timed region)."""
        self.write(self.pool[self.refills % len(self.pool)])
        self.refills += 1

    def fill_fresh(self, seed: int = FRESH_SEED) -> None:
        """Values no timed call has seen, into the same memory."""
        B, H, Tq, D = self.q.shape
        self.write(
            attention_inputs(
                B, H, self.k.size(2), D, self.q.device, self.q.dtype, requires_grad=False, Tq=Tq, seed=seed
            )
        )


def poison_freed_memory(sizes: Sequence[tuple[torch.Size, torch.dtype]], device: torch.device | str) -> bool:
    """On CUDA, allocate a block of each (shape, dtype), fill it with NaN and free it: the caching allocator
    hands these blocks to the next call's outputs of those sizes, so an output the call never writes holds
    NaN rather than the previous result. Returns whether it poisoned (False on CPU, whose allocator reuses
    memory unpredictably: there the fresh-input check alone catches a stale output)."""
    if torch.device(device).type != "cuda":
        return False
    blocks = [torch.full(shape, math.nan, dtype=dtype, device=device) for shape, dtype in sizes]
    del blocks
    return True


def heads_to_check(B: int, H: int, Tq: int, Tk: int, seed: int) -> torch.Tensor:
    """Indices into the flattened (B * H) heads: all of them while their float64 scores fit CHECK_SCORE_BYTES,
    else a seeded random subset that does (at least one)."""
    n = max(1, min(B * H, CHECK_SCORE_BYTES // (Tq * Tk * 8)))
    return torch.randperm(B * H, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def check_results(results, inputs: LiveInputs, *, context: str, seed: int = FRESH_SEED) -> str | None:
    """None if `results` (out, or out, dq, dk, dv) are what attention gives on the live inputs, by the pass rule
    max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d; else the first violation, in words."""
    results = (results,) if torch.is_tensor(results) else tuple(results)
    if any(r is None for r in results):
        return f"the call returned no result for {[i for i, r in enumerate(results) if r is None]} {context}"
    B, H, Tq, D = inputs.q.shape
    Tk = inputs.k.size(2)
    idx = heads_to_check(B, H, Tq, Tk, seed)

    def heads(t):  # (B, H, T, D) -> (n, 1, T, D): the checked heads as a batch of single-head problems
        return t.detach().reshape(B * H, 1, t.size(2), D)[idx.to(t.device)]

    q, k, v, do = (heads(t) for t in inputs.tensors)
    got = [heads(r) for r in results]
    names = ["out", "dq", "dk", "dv"][: len(got)]

    def run(dtype):  # the formula's out (and grads) in `dtype`
        xs = [t.to(dtype).requires_grad_(len(got) > 1) for t in (q, k, v)]
        o = attention_formula(*xs)
        return [o.detach(), *(torch.autograd.grad(o, xs, do.to(dtype)) if len(got) > 1 else [])]

    refs, naives = run(torch.float64), run(q.dtype)
    a = abs_logit_bound(q, k)
    mags = grad_magnitudes(q, k, v, do)
    terms = {"out": Tk, "dq": Tk, "dk": Tq, "dv": Tq}  # the longest sum behind each result
    for name, x, ref, naive in zip(names, got, refs, naives, strict=True):
        atol = rounding_noise(q.dtype, mags[name], a, n_terms=terms[name])
        try:
            check_rule(name, x, ref, naive, atol, context)
        except AssertionError as e:
            return f"result differs from the reference on fresh inputs: {e}"
    return None


def check_time(warm_s: float, cold_s: float | None, roof: Roofline) -> str | None:
    """None if the medians are possible under the roofline, else why not. Warm calls may read from cache, so
    they answer to the compute roof alone; cold calls read from memory and answer to both roofs."""
    if warm_s < IMPOSSIBLE_FRACTION * roof.compute_min_s:
        return (
            f"impossible time: warm median {warm_s:.3g} s is faster than {IMPOSSIBLE_FRACTION} x the compute roof "
            f"{roof.compute_min_s:.3g} s ({roof.flops:.3g} FLOPs at the measured {roof.peak_flop_per_s:.3g} FLOP/s)"
        )
    if cold_s is not None and cold_s < IMPOSSIBLE_FRACTION * roof.roofline_min_s:
        return (
            f"impossible time: cold median {cold_s:.3g} s is faster than {IMPOSSIBLE_FRACTION} x the roofline "
            f"{roof.roofline_min_s:.3g} s ({roof.bound} bound: {roof.flops:.3g} FLOPs, {roof.bytes_moved:.3g} bytes)"
        )
    return None
