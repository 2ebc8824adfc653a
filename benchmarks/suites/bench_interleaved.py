"""Interleaved ratios: for one configuration (device, dtype, T, mode) all backends are timed round by round in a
shuffled order, and each backend's row carries the median (p25, p75) of its per-round ratio to the baseline.
On CPU they are timed with --bench-interleaved-threads threads (default 1: see INTERLEAVED_CPU_THREADS).

The first case of a configuration measures every backend of it; the other cases read that measurement. In fwd
configurations an adapter of another framework's kernel has its crossing (attnbench.foreign.CROSSINGS: the same
tensors into the framework and back, no attention) timed in the same rounds: its row carries crossing_s and
crossing_ratio (crossing / the backend's whole call, median of the per-round ratios).
"""

import functools
import os
import statistics

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.interleaved import interleaved_times, ratio_summary
from attnbench.bench.measuring.measure import (
    attention_call,
    attention_inputs,
    case_info,
    cpu_threads,
    time_call,
    unavailable_reason,
)
from attnbench.bench.suites.pytest_benchmark_adapter import record_rounds
from attnbench.foreign import CROSSINGS

BUDGET_S = {"cpu": 30.0, "cuda": 5.0}  # timed seconds per configuration (all backends), sets the rounds
MIN_ROUNDS, MAX_ROUNDS = 9, 30  # at least 9 paired ratios: the median of 5 moved by 10% between runs at T=4096


def crossing_name(backend: str) -> str:
    return f"{backend} crossing"


def interleaved_rounds(round_s: float, device: str, quick: bool) -> int:
    """Rounds of one configuration whose calls take round_s together: they fill the device's budget, within the
    bounds (quick: a tenth of the budget, two rounds fewer at least)."""
    budget = BUDGET_S[device] / (10 if quick else 1)
    return max(MIN_ROUNDS - (2 if quick else 0), min(MAX_ROUNDS, int(budget / max(round_s, 1e-9))))


def measure_config(c, state) -> dict:
    """Warm up every backend of c's configuration (first_call_s), then time them interleaved; on CPU, with the
    interleaved thread count throughout."""
    threads = state.settings.interleaved_cpu_threads if c.device == "cpu" else None
    with cpu_threads(threads):
        return {**time_backends(c, state), "threads": torch.get_num_threads()}


def time_backends(c, state) -> dict:
    s = state.settings
    dtype = getattr(torch, c.dtype)
    B, H, D = s.shape(c.device)
    calls, first_s, warm_s, skipped = {}, {}, {}, {}
    for name in dict.fromkeys([c.baseline, *s.plan.run_backends]):  # the baseline is timed even when not selected
        backend = get_backend(name)
        reason = unavailable_reason(backend, c.device, dtype, backward=c.mode == "fwd+bwd")
        if reason:
            skipped[name] = reason
            continue
        q, k, v, do = attention_inputs(B, H, c.T, D, c.device, dtype, requires_grad=c.mode == "fwd+bwd")
        call = attention_call(backend, c.mode, q, k, v, do)
        try:
            first_s[name] = time_call(call, c.device)
            warm_s[name] = time_call(call, c.device)
        except torch.OutOfMemoryError:
            skipped[name] = f"out of memory at T={c.T}"
            continue
        if warm_s[name] > s.max_call_s[c.device]:
            skipped[name] = f"{warm_s[name]:.1f} s per call > budget {s.max_call_s[c.device]:.0f} s"
            continue
        calls[name] = call
        if c.mode == "fwd" and name in CROSSINGS:
            cross = calls[crossing_name(name)] = functools.partial(CROSSINGS[name], q, k, v)
            time_call(cross, c.device)  # its first call compiles or builds a session
            warm_s[crossing_name(name)] = time_call(cross, c.device)
    if c.baseline not in calls:
        return {"skipped": skipped, "no_baseline": f"baseline {c.baseline} not timed: {skipped.get(c.baseline)}"}
    rounds = interleaved_rounds(sum(warm_s[name] for name in calls), c.device, s.plan.quick)
    times = interleaved_times(calls, rounds, c.device, seed=c.T)
    return {"times": times, "ratios": ratio_summary(times, c.baseline), "first_s": first_s, "skipped": skipped}


def config_measurement(measured: dict, c, state, measure) -> dict:
    """The measurement of case c's configuration, from `measured` (the first case of a configuration measures
    every backend of it with `measure`); c is skipped with the reason its backend was not timed."""
    if c.config not in measured:
        measured[c.config] = measure(c, state)
    m = measured[c.config]
    if c.backend in m["skipped"]:
        pytest.skip(m["skipped"][c.backend])
    return m


def test_interleaved(benchmark, interleaved_case, bench_state):
    c = interleaved_case
    m = config_measurement(bench_state.interleaved, c, bench_state, measure_config)
    if "no_baseline" in m:
        pytest.skip(m["no_baseline"])
    times = m["times"][c.backend]
    record_rounds(benchmark, times)
    crossing = m["times"].get(crossing_name(c.backend))
    B, H, D = bench_state.settings.shape(c.device)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            **case_info("interleaved", c, (B, H, D), threads=m["threads"]),
            "baseline": c.baseline,
            **m["ratios"][c.backend],  # ratio_median, ratio_p25, ratio_p75, speedup_median, rounds
            "median_s": median_s,
            "first_call_s": m["first_s"][c.backend],
            "tokens_per_s": B * c.T / median_s,
            "load_avg_1m": os.getloadavg()[0],
        }
    )
    if crossing:
        benchmark.extra_info["crossing_s"] = statistics.median(crossing)
        benchmark.extra_info["crossing_ratio"] = statistics.median(x / t for x, t in zip(crossing, times, strict=True))
