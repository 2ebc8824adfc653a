"""Op level: every registered backend x T x {fwd, fwd+bwd} x dtype x device (cases from conftest.py).

Per case: one first call (timed apart: it includes any torch.compile), one call under the memory measurement,
one timed warm call that sets the number of rounds, then pytest-benchmark's pedantic rounds. Cases that the
smaller T of the same series predict to be too slow, or too big for memory, are skipped with the estimate.
"""

import os
import time

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.measure import (
    attention_call,
    attention_inputs,
    available_memory_bytes,
    case_info,
    causal_attention_flops,
    extrapolate,
    peak_memory_bytes,
    plan_rounds,
    score_matrix_bytes,
    synced,
    time_call,
    unavailable_reason,
)

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
    est = extrapolate(c.T, {t: r["peak_mem_bytes"] for t, r in series.items()})
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
    series = bench_state.op_results.setdefault((c.backend, c.device, c.dtype, c.mode), {})
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
    q, k, v, do = attention_inputs(B, H, c.T, D, c.device, dtype, requires_grad=c.mode == "fwd+bwd")
    call = synced(attention_call(backend, c.mode, q, k, v, do), c.device)
    try:
        first_call_s = time_call(call, c.device)
        peak_mem = peak_memory_bytes(call, c.device)
        warm_s = time_call(call, c.device)
        rounds, iterations = plan_rounds(warm_s, s.row_budget_s(c.device))
        benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=0)
    except torch.OutOfMemoryError as e:
        pytest.skip(f"out of memory at T={c.T}: {str(e).splitlines()[0]}")
    median_s = benchmark.stats.stats.median
    flops = causal_attention_flops(B, H, c.T, D, c.mode)
    peak_flops = bench_state.peak_flop_per_s(c.device, c.dtype)
    row = {
        **case_info("op", c, (B, H, D)),
        "median_s": median_s,
        "first_call_s": first_call_s,
        "tokens_per_s": B * c.T / median_s,
        "flops": flops,
        "flop_per_s": flops / median_s,
        "peak_flop_per_s": peak_flops,
        "fraction_of_peak": flops / median_s / peak_flops,
        "peak_mem_bytes": peak_mem,
        "score_matrix_bytes": score_matrix_bytes(B, H, c.T, dtype),
        "rounds": rounds,
        "iterations": iterations,
        "load_avg_1m": os.getloadavg()[0],  # a busy machine makes every time above noisy
    }
    benchmark.extra_info.update(row)
    series[c.T] = row
