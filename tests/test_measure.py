"""The measuring code of the benchmarks: FLOP formula, peak memory, scaling fit, interleaving, round planning."""

import importlib.metadata
import json
import math
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from attnbench import backend_names, get_backend
from attnbench.bench.measuring.envinfo import git_info
from attnbench.bench.measuring.interleaved import interleaved_times, ratio_summary, round_orders
from attnbench.bench.measuring.measure import (
    attention_call,
    attention_inputs,
    cpu_threads,
    extrapolate,
    matmul_peak_flop_per_s,
    peak_memory_bytes,
    plan_rounds,
    quantile,
    score_matrix_bytes,
)
from attnbench.bench.measuring.roofline import attention_flops
from attnbench.bench.measuring.scaling import fit_exponent, scaling_table
from attnbench.bench.options import RunConfig, parse_threads
from attnbench.bench.suites.conftest import pytest_ignore_collect, session_plan
from attnbench.bench.suites.pytest_benchmark_adapter import check_version, record_rounds
from attnbench.gpt.atomic import AtomicFile
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


def test_flop_formula():
    B, H, T, D = 2, 3, 64, 16
    fwd = attention_flops(B, H, T, T, D, "fwd")
    assert fwd == 4 * B * H * T * T * D / 2
    assert attention_flops(B, H, T, T, D, "bwd") == 2.5 * fwd
    assert attention_flops(B, H, T, T, D, "fwd+bwd") == 3.5 * fwd
    with pytest.raises(ValueError, match="mode"):
        attention_flops(B, H, T, T, D, "backward")


def test_flop_formula_is_half_the_counted_dense_forward():
    """torch's FLOP counter sees manual's two dense (T x T x D) matmuls; causality halves the useful work."""
    B, H, T, D = 1, 2, 128, 32
    q, k, v, _ = attention_inputs(B, H, T, D, "cpu", torch.float32, requires_grad=False)
    with FlopCounterMode(display=False) as counter:
        get_backend("manual")(q, k, v)
    assert counter.get_total_flops() == 2 * attention_flops(B, H, T, T, D, "fwd")


def test_score_matrix_bytes():
    assert score_matrix_bytes(2, 4, 128, torch.float32) == 2 * 4 * 128 * 128 * 4
    assert score_matrix_bytes(1, 1, 10, torch.bfloat16) == 200


def test_cpu_peak_memory_of_known_allocations():
    def fn():
        a = torch.empty(2**20, dtype=torch.uint8)
        b = torch.empty(2**21, dtype=torch.uint8)  # peak: a + b = 3 MiB
        del a
        c = torch.empty(2**19, dtype=torch.uint8)  # b + c = 2.5 MiB < peak
        del b, c

    assert peak_memory_bytes(fn, "cpu") == 3 * 2**20


B, H, T, D = 1, 16, 256, 16  # many heads, small D: per-head and (B, H, T, D) terms stay small beside the scores
S = score_matrix_bytes(B, H, T, torch.float32)  # one (B, H, T, T) float32 score matrix: 4 MiB


def peak(name: str, mode: str, T: int = T) -> int:
    q, k, v, do = attention_inputs(B, H, T, D, "cpu", torch.float32, requires_grad=mode == "fwd+bwd")
    call = attention_call(get_backend(name), mode, q, k, v, do)
    call()  # warm
    first, second = peak_memory_bytes(call), peak_memory_bytes(call)
    assert first == second, f"{name} {mode}: peak memory not repeatable ({first} vs {second})"
    return first


def test_cpu_peak_memory_matches_the_score_matrix():
    # manual: the scaled scores exist beside the raw ones (and masked beside scaled, softmax beside masked)
    assert 2 * S <= peak("manual", "fwd") <= 2.5 * S
    assert peak("manual", "fwd+bwd") >= 2 * S  # softmax kept for backward + its gradient
    # per_head_loop: one head's (B, T, T) scores at a time in inference, all heads' softmax kept for backward
    assert 2 * S / H <= peak("per_head_loop", "fwd") < S / 3
    assert peak("per_head_loop", "fwd+bwd") >= S
    # flash never materializes the scores: far below S, and linear in T where manual is quadratic
    flash = peak("sdpa_flash", "fwd")
    assert flash < S / 4
    assert peak("sdpa_flash", "fwd", 2 * T) / flash < 2.5 < 3.5 < peak("manual", "fwd", 2 * T) / peak("manual", "fwd")


def test_fit_exponent_recovers_known_exponents():
    xs = [128, 256, 512, 1024, 2048]
    for p in (1.0, 1.7, 2.0):
        assert fit_exponent(xs, [3.0 * x**p for x in xs]) == pytest.approx(p, abs=1e-9)
    rng = random.Random(0)
    noisy = [5.0 * x**2 * math.exp(rng.uniform(-0.05, 0.05)) for x in xs]
    assert fit_exponent(xs, noisy) == pytest.approx(2.0, abs=0.05)
    with pytest.raises(ValueError):
        fit_exponent([128, 128], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_exponent([128, 256], [0.0, 2.0])


def test_scaling_table_fits_the_largest_T_per_series():
    def row(backend, mode, T, t, m):
        return {"kind": "op", "backend": backend, "device": "cpu", "dtype": "float32", "mode": mode, "T": T,
                "median_s": t, "peak_mem_bytes": m}  # fmt: skip

    Ts = [64, 128, 256, 512, 1024, 2048]
    rows = [row("quad", "fwd", T, 1e-3 if T < 256 else T**2 * 1e-9, T**2) for T in Ts]  # flat at small T
    rows += [row("lin", "fwd", T, T * 1e-6, T) for T in Ts] + [row("one", "fwd", 128, 1.0, 1)]
    rows += [{"kind": "interleaved", "backend": "x"}]
    table = {r["backend"]: r for r in scaling_table(rows, last=4)}
    assert set(table) == {"quad", "lin"}  # one T only: no fit
    assert table["quad"]["T_fit"] == [256, 512, 1024, 2048]
    assert table["quad"]["time_exponent"] == pytest.approx(2.0)
    assert table["lin"]["mem_exponent"] == pytest.approx(1.0)


def test_round_orders_shuffle_each_round_and_keep_every_name():
    names = ["a", "b", "c", "d"]
    orders = round_orders(names, 20, seed=1)
    assert all(sorted(o) == names for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # shuffled, not one fixed order
    assert orders == round_orders(names, 20, seed=1)  # seeded


def test_interleaved_times_run_round_by_round():
    calls_seen = []
    calls = {n: (lambda n=n: calls_seen.append(n)) for n in ("a", "b", "c")}
    times = interleaved_times(calls, 5, seed=3, timer=lambda fn, device: (fn(), 1.0)[1])
    assert calls_seen == [n for order in round_orders(list(calls), 5, seed=3) for n in order]
    assert times == {n: [1.0] * 5 for n in calls}


def test_ratio_summary_uses_per_round_ratios():
    # the machine slows down 10x in round 3: per-round ratios do not see it, pooled medians would
    times = {"base": [1.0, 1.0, 10.0, 1.0], "fast": [0.5, 0.4, 5.0, 0.5]}
    s = ratio_summary(times, "base")
    assert s["base"]["ratio_median"] == 1.0
    assert s["fast"]["ratio_median"] == pytest.approx(0.5)
    assert s["fast"]["ratio_p25"] == pytest.approx(0.475)
    assert s["fast"]["speedup_median"] == pytest.approx(2.0)
    assert s["fast"]["rounds"] == 4
    with pytest.raises(ValueError, match="baseline"):
        ratio_summary(times, "missing")


def test_quantile_matches_numpy():
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert quantile(xs, q) == pytest.approx(np.percentile(xs, 100 * q))


def test_plan_rounds_and_extrapolate():
    assert plan_rounds(0.1, 1.0) == (10, 1)
    assert plan_rounds(5.0, 1.0) == (3, 1)  # never fewer than min_rounds
    rounds, iterations = plan_rounds(1e-5, 1.0)
    assert iterations == 100 and rounds == 50  # fast calls: several per round, capped rounds
    assert extrapolate(4096, {1024: 1.0, 2048: 2.0}) == (2048, 8.0)
    assert extrapolate(128, {1024: 1.0}) is None


def test_matmul_peak_is_a_plausible_rate():
    rate = matmul_peak_flop_per_s("cpu", torch.float32, n=256, reps=2)
    assert 1e7 < rate < 1e14


def test_atomic_file_replaces_only_when_complete(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with AtomicFile(path) as fh:
            fh.write(b"half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]
    with AtomicFile(path) as fh:
        fh.write(json.dumps({"ok": 1}).encode())
    assert json.loads(path.read_text()) == {"ok": 1}


class StubConfig:
    def __init__(self, **options):
        self.options = options

    def getoption(self, name, default=None):
        return self.options.get(name, default)


def test_the_plugin_alone_resolves_its_options_as_the_plan(tmp_path):
    """Without --bench-config the plugin resolves its own options (RunConfig.resolve): --bench-T and --bench-backends
    reach the sweeps, the ratios and the training to target have options of their own; with it, the file is the plan."""
    own = {"bench_device": "cpu", "ttt_recipe": "fast"}
    plan = session_plan(StubConfig(**own, bench_T="128:512", bench_backends="manual,sdpa"))
    assert plan.Ts == {"cpu": [128, 256, 512]} and plan.feature_Ts == [128, 256, 512]
    assert plan.run_backends == plan.feature_backends == ["manual", "sdpa"]
    assert plan.interleaved_Ts == {"cpu": [1024, 2048, 4096]} and plan.ttt_backends == ["sdpa", "manual"]
    plan = session_plan(StubConfig(**own, bench_quick=True, bench_interleaved_T="512", ttt_backends="manual"))
    assert plan.interleaved_Ts == {"cpu": [512]} and plan.ttt_backends == ["manual"] and plan.ttt_recipe == "fast"
    assert session_plan(StubConfig(**own, ttt_quick=True)).ttt_recipe == "quick"
    assert session_plan(StubConfig(**{**own, "ttt_recipe": "gqa_window"})).ttt_backends == backend_names()
    RunConfig(T=[128, 256], quick=True).resolve().write(tmp_path / "run-config.json")
    read = session_plan(StubConfig(bench_config=str(tmp_path / "run-config.json"), bench_T="1024"))
    assert read == RunConfig.read(tmp_path / "run-config.json") and read.interleaved_Ts["cpu"] == [128, 256]


def test_bench_files_are_ignored_without_benchmark_only():
    bench, other = REPO / "benchmarks" / "suites" / "bench_ops.py", REPO / "benchmarks" / "measuring" / "measure.py"
    assert pytest_ignore_collect(bench, StubConfig()) is True
    assert pytest_ignore_collect(bench, StubConfig(benchmark_only=True)) is None
    assert pytest_ignore_collect(other, StubConfig()) is None


def test_benchmark_only_collects_every_backend():
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
           "benchmarks/suites/bench_ops.py", "--benchmark-only", "--bench-quick", "--bench-device=cpu"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    for name in backend_names():
        for mode in ("fwd", "fwd+bwd"):
            assert f"test_op[{name}-cpu-float32-{mode}-T128]" in out


def test_cpu_threads_sets_the_count_inside_and_restores_it_after():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("restored even when the block raises")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def run_interleaved(tmp_path, *options) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/suites/bench_interleaved.py",
           "--benchmark-only", "--bench-quick", "--bench-device=cpu", "--bench-backends=manual,chunked",
           "--bench-interleaved-T=128", f"--bench-json={tmp_path / 'il.json'}", *options]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_interleaved_rows_are_timed_with_one_cpu_thread_by_default(tmp_path):
    done = run_interleaved(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads((tmp_path / "il.json").read_text())
    rows = {b["extra_info"]["backend"]: b["extra_info"] for b in out["benchmarks"]}
    assert set(rows) == {"manual", "chunked"}
    assert all(r["threads"] == 1 for r in rows.values())
    assert rows["manual"]["ratio_median"] == 1.0 and rows["chunked"]["ratio_median"] > 0
    # benchmark runs keep freed CPU memory for reuse (glibc only: elsewhere there is nothing to set)
    assert out["attnbench"]["cpu_memory_kept_for_reuse"] is (platform.libc_ver()[0] == "glibc")


def test_interleaved_baseline_option_reaches_the_ratios(tmp_path):
    # --bench-baseline used to land in the case's `graph` field (positional), so the ratios kept manual as their
    # baseline and the CPU rows were named "-graph"; now chunked is the baseline and the ids are plain.
    done = run_interleaved(tmp_path, "--bench-baseline=chunked")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {b["extra_info"]["backend"]: b for b in json.loads((tmp_path / "il.json").read_text())["benchmarks"]}
    assert {r["extra_info"]["baseline"] for r in rows.values()} == {"chunked"}
    assert rows["chunked"]["extra_info"]["ratio_median"] == 1.0
    assert not any(r["name"].endswith("-graph]") for r in rows.values())


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_interleaved_threads_option_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="--bench-interleaved-threads takes a positive integer or 'all'"):
        parse_threads(bad, default=1)


def test_a_bad_threads_option_is_a_usage_error_of_the_suite(tmp_path):
    done = run_interleaved(tmp_path, "--bench-interleaved-threads=two")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--bench-interleaved-threads takes a positive integer or 'all', got 'two'" in done.stderr


def test_op_sweep_skips_a_case_whose_process_memory_would_not_fit(monkeypatch):
    from attnbench.bench.suites import bench_ops
    from attnbench.bench.suites.conftest import OpCase

    series = {1024: {"median_s": 0.01, "peak_mem_bytes": 2**30}}  # 1 GiB at T=1024 -> 4 GiB at T=2048
    case = OpCase("manual", "cpu", "float32", 2048, "fwd")
    # CPU: 4 GiB x3 (the kept, fragmented heap) = 12 GiB must fit in half of what is available
    monkeypatch.setattr(bench_ops, "available_memory_bytes", lambda device: 25 * 2**30)
    assert bench_ops.budget_skip_reason(case, series, max_call_s=10.0) is None
    monkeypatch.setattr(bench_ops, "available_memory_bytes", lambda device: 23 * 2**30)
    assert "estimated peak 4.0 GiB" in bench_ops.budget_skip_reason(case, series, max_call_s=10.0)


def test_adapter_records_rounds_timed_outside_the_fixture(benchmark):
    from pytest_benchmark.fixture import FixtureAlreadyUsed

    record_rounds(benchmark, [0.3, 0.1, 0.2, 0.5])
    stats = benchmark.stats.stats
    assert (stats.rounds, stats.min, stats.median, stats.max) == (4, 0.1, 0.25, 0.5)
    with pytest.raises(FixtureAlreadyUsed):  # as after pedantic(): one measurement per fixture
        benchmark.pedantic(lambda: None, rounds=1)


def test_adapter_refuses_an_unchecked_pytest_benchmark_version():
    assert check_version() == importlib.metadata.version("pytest-benchmark")
    assert check_version("4.0.0") == "4.0.0"
    with pytest.raises(RuntimeError, match="pytest-benchmark 6.0.0 is not supported"):
        check_version("6.0.0")


def test_git_info_is_dirty_for_changed_code_not_for_a_run_written_into_reports(tmp_path):
    # A run writes its own folder under reports/ before it records the environment: that alone must not make the
    # report say "(uncommitted changes)"; a changed source file must.
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "kernel.py").write_text("x = 1\n")
    git("add", "kernel.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "reports" / "2026-12-02_000000").mkdir(parents=True)
    (tmp_path / "reports" / "2026-12-02_000000" / "run.json").write_text("{}")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "kernel.py").write_text("x = 2\n")
    assert git_info(tmp_path)["dirty"] is True
