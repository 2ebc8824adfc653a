"""Op level: every registered backend x T x {fwd, fwd+bwd, decode} x dtype x device (cases from conftest.py),
each timed warm and cold, placed on the roofline and checked for integrity (measuring/op_timing.py).

decode is one query row against T keys (a generation step), the memory-bound case. On CUDA, short calls are
also timed replayed from a CUDA graph, as their own rows. A row that fails the integrity layer (a result that
differs from the reference on fresh inputs, or a time the roofline rules out) is written with the reason in
its `integrity` field and fails its test. Cases that the smaller T of the same series predict to be too slow,
or too big for memory, are skipped with the estimate.
"""

import os
import time

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.measure import (
    available_memory_bytes,
    case_info,
    extrapolate,
    score_matrix_bytes,
    unavailable_reason,
)
from attnbench.bench.measuring.op_timing import OpShape, time_op
from attnbench.bench.suites.pytest_benchmark_adapter import record_rounds

MEMORY_FRACTION = 0.5  # skip a case whose estimated need exceeds this share of the memory available now
# Process memory per byte of a case's allocator peak. On CPU, benchmark runs keep freed memory for reuse
# (conftest.keep_freed_cpu_memory) and glibc's heap fragments: the process grew to 4.4x the peak (toy_plugin
# fwd+bwd at T=4096: 5.7 GB for a 1.3 GB peak), so 3x here, with MEMORY_FRACTION's margin on top.
MEMORY_PER_PEAK_BYTE = {"cpu": 3.0, "cuda": 1.0}
BACKEND_BUDGET_S = {"cpu": 120.0, "cuda": 60.0}  # wall seconds of one backend's op cases (compiles included)


def budget_skip_reason(c, series: dict[int, dict], max_call_s: float) -> str | None:
    """Why case `c` is predicted to exceed the time or memory budget (quadratic in T from the series), or None."""
    est = extrapolate(c.T, {t: r["median_s"] for t, r in series.items()})
    if est and est[1] > max_call_s:
        return f"estimated {est[1]:.1f} s per call (from T={est[0]}, x(T ratio)^2) > budget {max_call_s:.0f} s"
    est = extrapolate(c.T, {t: r["peak_mem_bytes"] for t, r in series.items() if r["peak_mem_bytes"] is not None})
    avail, per_byte = available_memory_bytes(c.device), MEMORY_PER_PEAK_BYTE[c.device]
    if est and est[1] * per_byte > MEMORY_FRACTION * avail:
        return (
            f"estimated peak {est[1] / 2**30:.1f} GiB (from T={est[0]}, x(T ratio)^2), x{per_byte:.0f} for the "
            f"process > {MEMORY_FRACTION:.0%} of the {avail / 2**30:.1f} GiB available"
        )
    return None


def test_op(benchmark, op_case, bench_state):
    c, s = op_case, bench_state.settings
    backend, dtype = get_backend(c.backend), getattr(torch, c.dtype)
    reason = unavailable_reason(backend, c.device, dtype, backward=c.mode == "fwd+bwd")
    if reason:
        pytest.skip(reason)
    series = bench_state.op_results.setdefault((c.backend, c.device, c.dtype, c.mode, c.graph), {})
    reason = budget_skip_reason(c, series, s.max_call_s[c.device])
    spent, budget = bench_state.spent_s.get((c.backend, c.device), 0.0), BACKEND_BUDGET_S[c.device]
    if spent > budget:
        reason = f"{c.backend} spent its {budget:.0f} s op-sweep budget on {c.device} ({spent:.0f} s with compiles)"
    if reason:
        pytest.skip(reason)
    t0 = time.perf_counter()
    try:
        measure_op(benchmark, c, bench_state, backend, dtype, series)
    finally:
        bench_state.spent_s[(c.backend, c.device)] = spent + time.perf_counter() - t0


def measure_op(benchmark, c, bench_state, backend, dtype, series):
    s = bench_state.settings
    B, H, D = s.shape(c.device)
    shape = OpShape.for_mode(c.mode, B, H, c.T, D)
    try:
        t = time_op(
            backend,
            c.mode,
            shape,
            c.device,
            dtype,
            peak_flop_per_s=bench_state.peak_flop_per_s(c.device, c.dtype),
            bandwidth_bytes_per_s=bench_state.bandwidth_bytes_per_s(c.device),
            flush=bench_state.flush(c.device),
            budget_s=s.row_budget_s(c.device),
            graph=c.graph,
        )
    except torch.OutOfMemoryError as e:
        pytest.skip(f"out of memory at T={c.T}: {str(e).splitlines()[0]}")
    except RuntimeError as e:
        if not c.graph:
            raise
        pytest.skip(f"{c.backend} cannot be captured in a CUDA graph: {str(e).splitlines()[0]}")
    record_rounds(benchmark, t.warm_s)  # the warm rounds are the row's stats (CUDA events on CUDA)
    row = {
        **case_info("op", c, (B, H, D)),
        **t.row(),
        "score_matrix_bytes": score_matrix_bytes(B, H, c.T, dtype) * shape.Tq // c.T,
        "rounds": len(t.warm_s),
        "iterations": 1,
        "load_avg_1m": os.getloadavg()[0],  # a busy machine makes every time above noisy
    }
    benchmark.extra_info.update(row)
    if t.problems:
        pytest.fail(f"{c.id} rejected by the integrity layer: " + "; ".join(t.problems), pytrace=False)
    series[c.T] = row
