"""Feature sweep: grouped-query attention (8:1, 4:1 query heads per key/value head) and a 256-key sliding window,
per backend, T and mode (cases from conftest.py: FEATURE_SPECS at the plan's feature_Ts), against dense-masked SDPA.

Per configuration (feature, device, dtype, T, mode) every backend that implements the feature is warmed up
and measured once under the allocator's memory events (peak_mem_bytes), then all of them are timed
interleaved, round by round in a shuffled order, with the interleaved thread count (as bench_interleaved.py).
Each row carries the median time, its per-round ratio to the baseline (sdpa_math: the window reaches it as a
(T, T) boolean mask, GQA through enable_gqa on the full causal score matrix) and the FLOPs of the visible
(query, key) pairs (roofline.mask_visible_pairs), so FLOP/s and the fraction of peak are those of the work the
mask asks for. A backend lacking the feature, device, dtype or backward is skipped with its reason, and so is
one the smaller T predict too slow or too big. The JSON's "attnbench" -> "feature_scaling" holds the time and
memory exponents in T per (backend, feature, mode): a window's work is linear in T, so is a good kernel's time.
"""

import os
import statistics

import torch
from attnbench import AttentionCall, get_backend
from attnbench.bench.measuring.interleaved import interleaved_times, ratio_summary
from attnbench.bench.measuring.measure import (
    attention_call,
    attention_inputs,
    case_info,
    cpu_threads,
    peak_memory_bytes,
    time_call,
    unavailable_reason,
)
from attnbench.bench.measuring.roofline import mask_visible_pairs, pairs_flops
from attnbench.bench.schema import make_row
from attnbench.bench.suites.bench_interleaved import config_measurement, interleaved_rounds
from attnbench.bench.suites.bench_ops import budget_skip_reason
from attnbench.bench.suites.pytest_benchmark_adapter import record_rounds

B, D = 1, 64


def feature_kwargs(c) -> dict:
    """The contract's keyword arguments of case c's feature (GQA needs none: k and v have fewer heads)."""
    return {} if c.feature.window is None else {"window": c.feature.window}


def skip_reason(backend, c, q, k) -> str | None:
    """Why `backend` cannot run case c here (device, dtype, backward, a feature it lacks), or None."""
    if reason := unavailable_reason(backend, c.device, getattr(torch, c.dtype), backward=c.mode == "fwd+bwd"):
        return reason
    for feature in AttentionCall.of(feature_kwargs(c)).features(q, k):
        if reason := backend.why_no_feature(feature, c.device):
            return reason
    return None


def measure_config(c, state) -> dict:
    """Warm up every backend of c's configuration and measure its peak memory, then time them interleaved; on
    CPU with the interleaved thread count throughout."""
    s = state.settings
    calls, first_s, warm_s, peaks, skipped, series = {}, {}, {}, {}, {}, {}
    with cpu_threads(s.interleaved_cpu_threads if c.device == "cpu" else None):
        for name in dict.fromkeys([c.baseline, *s.plan.feature_backends]):  # the baseline is timed, selected or not
            backend = get_backend(name)
            series[name] = state.feature_series.setdefault((name, c.feature, c.device, c.dtype, c.mode), {})
            q, k, v, do = attention_inputs(
                B, c.feature.H, c.T, D, c.device, getattr(torch, c.dtype), requires_grad=c.mode == "fwd+bwd",
                Hkv=c.feature.Hkv,
            )  # fmt: skip
            reason = skip_reason(backend, c, q, k) or budget_skip_reason(c, series[name], s.max_call_s[c.device])
            if reason:
                skipped[name] = reason
                continue
            call = attention_call(backend, c.mode, q, k, v, do, **feature_kwargs(c))
            try:
                first_s[name] = time_call(call, c.device)  # compiles, allocator warm-up
                warm_s[name] = time_call(call, c.device)
                peaks[name] = peak_memory_bytes(call, c.device)
            except torch.OutOfMemoryError:
                skipped[name] = f"out of memory at T={c.T}"
                continue
            series[name][c.T] = {"median_s": warm_s[name], "peak_mem_bytes": peaks[name]}  # the next T's estimate
            if warm_s[name] > s.max_call_s[c.device]:
                skipped[name] = f"{warm_s[name]:.1f} s per call > budget {s.max_call_s[c.device]:.0f} s"
                continue
            calls[name] = call
        rounds = interleaved_rounds(sum(warm_s[name] for name in calls), c.device, s.plan.quick)
        times = interleaved_times(calls, rounds, c.device, seed=c.T)
        threads = torch.get_num_threads()
    for name, ts in times.items():
        series[name][c.T]["median_s"] = statistics.median(ts)
    ratios = ratio_summary(times, c.baseline) if c.baseline in times else {}
    return dict(times=times, ratios=ratios, first_s=first_s, peaks=peaks, skipped=skipped, threads=threads)


def test_feature(benchmark, feature_case, bench_state):
    c = feature_case
    m = config_measurement(bench_state.features, c, bench_state, measure_config)
    record_rounds(benchmark, m["times"][c.backend])
    median_s = benchmark.stats.stats.median
    pairs = mask_visible_pairs(B, c.feature.H, c.T, c.T, window=c.feature.window)
    flops = pairs_flops(pairs, D, c.mode)
    peak = bench_state.peak_flop_per_s(c.device, c.dtype)
    row = make_row(
        **case_info("feature_op", c, (B, c.feature.H, D), threads=m["threads"]),
        feature=c.feature.name,
        Hkv=c.feature.Hkv,
        window=c.feature.window,
        baseline=c.baseline,
        # ratio_median, ratio_p25, ratio_p75, speedup_median, rounds; none when the baseline was skipped
        **m["ratios"].get(c.backend, {"baseline_skipped": m["skipped"].get(c.baseline)}),
        median_s=median_s,
        first_call_s=m["first_s"][c.backend],
        peak_mem_bytes=m["peaks"][c.backend],
        visible_pairs=pairs,
        flops=flops,
        flop_per_s=flops / median_s,
        peak_flop_per_s=peak,
        fraction_of_peak=flops / median_s / peak,
        load_avg_1m=os.getloadavg()[0],  # a busy machine makes every time above noisy
    )
    benchmark.extra_info.update(row)
