"""One op row timed so that it can be trusted: warm-up, warm and cold rounds on refilled inputs, the roofline,
and the integrity checks (timers.py, roofline.py, integrity.py).

Order per row: warm-up until two calls agree (the first call, with any compile, reported apart); peak memory
of one call; warm rounds; cold rounds (the caches flushed before each call); one more call on fresh inputs
checked against the reference; the medians checked against the roofline.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch
from attnbench import Backend

from .integrity import LiveInputs, check_results, check_time, poison_freed_memory
from .measure import attention_call, peak_memory_bytes, quantile, synchronize
from .roofline import Roofline, attention_bytes, attention_flops, roofline
from .timers import CacheFlush, cuda_graph, time_calls, warm_up

OP_MODES = ("fwd", "fwd+bwd", "decode")  # decode: one query row (Tq = 1) against Tk = T keys, forward
CALL_MODE = {"fwd": "fwd", "fwd+bwd": "fwd+bwd", "decode": "fwd"}
MIN_ROUNDS = 5  # fewer and a median is one noisy call away from moving
MAX_WARM_ROUNDS = 200  # per-call timing needs no batching into iterations; this caps tiny calls
MAX_COLD_ROUNDS = 30  # each cold round also writes the flush buffer (2x the last-level cache)
COLD_SHARE = 0.5  # the cold rounds get this share of the row's timed budget beside the warm rounds'


@dataclass(frozen=True)
class OpShape:
    B: int
    H: int
    Tq: int  # query rows: Tk, or 1 for decode
    Tk: int
    D: int

    @classmethod
    def for_mode(cls, mode: str, B: int, H: int, T: int, D: int) -> OpShape:
        if mode not in OP_MODES:
            raise ValueError(f"mode must be one of {OP_MODES}, got {mode!r}")
        return cls(B, H, 1 if mode == "decode" else T, T, D)


def plan_cold_warm(call_s: float, flush_s: float, budget_s: float) -> tuple[int, int]:
    """(warm rounds, cold rounds) that fill budget_s (warm) and COLD_SHARE of it (cold), within the bounds."""
    call_s = max(call_s, 1e-9)
    warm = int(budget_s / call_s)
    cold = int(COLD_SHARE * budget_s / (call_s + flush_s))
    return max(MIN_ROUNDS, min(MAX_WARM_ROUNDS, warm)), max(MIN_ROUNDS, min(MAX_COLD_ROUNDS, cold))


@dataclass
class OpTiming:
    mode: str
    shape: OpShape
    graph: bool  # replayed from a CUDA graph
    timer: str  # "cuda events" or "wall clock"
    first_call_s: float
    warmup_calls: int
    peak_mem_bytes: int | None
    warm_s: list[float]
    cold_s: list[float]
    flush_bytes: int
    roof: Roofline
    problems: list[str] = field(default_factory=list)  # integrity failures; empty: the row stands

    @property
    def median_s(self) -> float:
        return statistics.median(self.warm_s)

    @property
    def cold_median_s(self) -> float:
        return statistics.median(self.cold_s)

    def row(self) -> dict:
        """The row's fields (timing, roofline, integrity); the warm rounds themselves go to pytest-benchmark."""
        warm, cold, r = self.median_s, self.cold_median_s, self.roof
        return {
            "Tq": self.shape.Tq,
            "timing": "cuda graph" if self.graph else "eager",
            "timer": self.timer,
            "median_s": warm,
            "first_call_s": self.first_call_s,
            "warmup_calls": self.warmup_calls,
            "cold_median_s": cold,
            "cold_q1_s": quantile(self.cold_s, 0.25),
            "cold_q3_s": quantile(self.cold_s, 0.75),
            "cold_rounds": len(self.cold_s),
            "cold_over_warm": cold / warm,
            "flush_bytes": self.flush_bytes,
            "tokens_per_s": self.shape.B * self.shape.Tq / warm,
            "flop_per_s": r.flops / warm,
            "fraction_of_peak": r.flops / warm / r.peak_flop_per_s,
            "bytes_per_s": r.bytes_moved / cold,  # cold: the bandwidth roof is memory's, which warm calls skip
            "fraction_of_bandwidth": r.bytes_moved / cold / r.bandwidth_bytes_per_s,
            **r.as_row(),
            "peak_mem_bytes": self.peak_mem_bytes,
            "integrity": "; ".join(self.problems) or "ok",
        }


def time_op(
    backend: Backend,
    mode: str,
    shape: OpShape,
    device: str,
    dtype: torch.dtype,
    *,
    peak_flop_per_s: float,
    bandwidth_bytes_per_s: float,
    flush: CacheFlush,
    budget_s: float,
    graph: bool = False,
    measure_memory: bool = True,
) -> OpTiming:
    """Time `backend` in `mode` on `shape` warm and cold, then check it (module docstring)."""
    s = shape
    inputs = LiveInputs.create(s.B, s.H, s.Tq, s.Tk, s.D, device, dtype, requires_grad=mode == "fwd+bwd")
    eager = attention_call(backend, CALL_MODE[mode], *inputs.tensors)
    if graph:
        inputs.refill()
        call, captured = cuda_graph(eager, device)
    else:
        call, captured = eager, None
    warm = warm_up(call, device, before=inputs.refill)
    peak_mem = peak_memory_bytes(eager, device) if measure_memory and not graph else None
    flush_s = time_calls(flush, device, 1)[0]
    n_warm, n_cold = plan_cold_warm(warm.settled_s, flush_s, budget_s)
    warm_s = time_calls(call, device, n_warm, before=inputs.refill)

    def refill_and_flush():
        inputs.refill()
        flush()

    cold_s = time_calls(call, device, n_cold, before=refill_and_flush)
    flops = attention_flops(s.B, s.H, s.Tq, s.Tk, s.D, CALL_MODE[mode])
    roof = roofline(
        flops,
        attention_bytes(s.B, s.H, s.Tq, s.Tk, s.D, dtype, CALL_MODE[mode]),
        peak_flop_per_s,
        bandwidth_bytes_per_s,
    )
    timing = OpTiming(
        mode=mode,
        shape=s,
        graph=graph,
        timer="cuda events" if torch.device(device).type == "cuda" else "wall clock",
        first_call_s=warm.first_call_s,
        warmup_calls=warm.calls,
        peak_mem_bytes=peak_mem,
        warm_s=warm_s,
        cold_s=cold_s,
        flush_bytes=flush.nbytes,
        roof=roof,
    )
    context = f"[{backend.name} {mode} B={s.B} H={s.H} Tq={s.Tq} Tk={s.Tk} D={s.D} {dtype} on {device}]"
    timing.problems = [
        p
        for p in (check_fresh(call, captured, inputs, context), check_time(timing.median_s, timing.cold_median_s, roof))
        if p
    ]
    return timing


def check_fresh(call, captured, inputs: LiveInputs, context: str) -> str | None:
    """Run the timed call once more on never-seen inputs in the same memory, its outputs poisoned first (a
    graph's captured outputs directly; eager outputs through the allocator on CUDA), and check the results."""
    if captured is not None:
        inputs.fill_fresh()
        for t in captured:
            t.fill_(math.nan)
        call()
        results = captured
    else:
        previous = call()  # the sizes of this call's outputs, to poison blocks of the same sizes
        sizes = [(t.shape, t.dtype) for t in previous if t is not None]
        del previous  # freed first, so that the poisoned blocks are the ones the next outputs get
        inputs.fill_fresh()
        poison_freed_memory(sizes, inputs.q.device)
        results = call()
    synchronize(inputs.q.device)
    return check_results(results, inputs, context=context)
