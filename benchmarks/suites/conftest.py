"""pytest wiring of the attnbench benchmarks: options, the sweep's cases, session state, the JSON summary.

`pytest` alone never collects bench_*.py (the default run stays fast); `pytest --benchmark-only` runs them.
Cases are generated here from the session's resolved plan (options.RunConfig.resolve: --bench-config's file,
else the options), over the backend registry, so a newly registered backend is benchmarked without any edit.
The README's "Benchmarks" section lists the options and the fields of a row.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import functools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.interleaved import DEFAULT_BASELINE
from attnbench.bench.measuring.measure import matmul_peak_flop_per_s
from attnbench.bench.measuring.op_timing import OP_MODES
from attnbench.bench.measuring.roofline import copy_bandwidth_bytes_per_s
from attnbench.bench.measuring.scaling import scaling_table
from attnbench.bench.measuring.timers import CacheFlush
from attnbench.bench.measuring.train_to_target import RECIPES, Recipe
from attnbench.bench.options import (
    DEVICE_DEFAULTS,
    RunConfig,
    StageOptions,
    csv_list,
    parse_backends,
    parse_dtypes,
    parse_T,
    parse_threads,
)
from attnbench.bench.suites.pytest_benchmark_adapter import check_version, commit_json, write_json_atomically

BENCH_FILES = "bench_*.py"
# Interleaved ratios on CPU are timed with one thread. With two, a run's ratios sat in one of two states for
# minutes at a time (the kernels that synchronize threads often, against the big-matmul baseline), so two runs
# differed by up to 25%; with one thread, five runs agreed within 5.3% of each other. Multi-thread speed: op sweep.
INTERLEAVED_CPU_THREADS = 1
GRAPH_MAX_T = 2048  # CUDA-graph rows up to this T (and every decode row): where launch overhead is a visible share
FEATURE_MODES = ("fwd", "fwd+bwd")
FEATURE_BASELINE = "sdpa_math"  # dense-masked SDPA: the math kernel, given a window as a (T, T) boolean mask


@dataclass(frozen=True)
class OpCase:
    backend: str
    device: str
    dtype: str
    T: int
    mode: str
    graph: bool = False  # replayed from a CUDA graph (short calls on CUDA): its own row beside the eager one

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}-{self.dtype}-{self.mode}-T{self.T}" + ("-graph" if self.graph else "")


@dataclass(frozen=True)
class InterleavedCase(OpCase):
    baseline: str = DEFAULT_BASELINE

    @property
    def config(self) -> tuple:  # all backends of one config are timed together
        return (self.device, self.dtype, self.T, self.mode, self.baseline)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    H: int  # query heads
    Hkv: int  # key/value heads: H // Hkv query heads share one (grouped-query attention)
    window: int | None = None  # sliding window: each query sees its `window` latest keys


FEATURE_SPECS = (FeatureSpec("gqa8:1", 8, 1), FeatureSpec("gqa4:1", 8, 2), FeatureSpec("window256", 4, 4, 256))


@dataclass(frozen=True)
class FeatureCase:
    backend: str
    feature: FeatureSpec
    device: str
    dtype: str
    T: int
    mode: str
    baseline: str = FEATURE_BASELINE

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.feature.name}-{self.device}-{self.dtype}-{self.mode}-T{self.T}"

    @property
    def config(self) -> tuple:  # all backends of one config are timed together
        return (self.feature, self.device, self.dtype, self.T, self.mode, self.baseline)


@dataclass(frozen=True)
class ModelCase:
    backend: str
    device: str
    dtype: str
    use_cache: bool | None = None  # generation only

    @property
    def id(self) -> str:
        cache = "" if self.use_cache is None else ("-cache" if self.use_cache else "-nocache")
        return f"{self.backend}-{self.device}-{self.dtype}{cache}"


@dataclass
class BenchSettings:
    plan: RunConfig  # resolved: the backends, devices, dtypes and T of every stage, the training's backends and recipe
    interleaved_cpu_threads: int | None  # None: torch's own setting (all cores)
    baseline: str
    max_call_s: dict[str, float]

    def shape(self, device: str) -> tuple[int, int, int]:
        d = DEVICE_DEFAULTS[device]
        return d.B, d.H, d.D

    def row_budget_s(self, device: str) -> float:
        return DEVICE_DEFAULTS[device].row_budget_s / (5 if self.plan.quick else 1)


@dataclass
class BenchState:
    """What one session shares: settings, measured matmul peaks, op results (for budget estimates), the summary."""

    settings: BenchSettings
    peak_flops: dict[tuple[str, str], float] = field(default_factory=dict)
    bandwidths: dict[str, float] = field(default_factory=dict)  # device -> copy bytes/s
    flushes: dict[str, CacheFlush] = field(default_factory=dict)  # device -> its cache flush (one buffer)
    op_results: dict[tuple, dict[int, dict]] = field(default_factory=dict)  # (backend, device, dtype, mode) -> T -> row
    interleaved: dict[tuple, dict] = field(default_factory=dict)  # InterleavedCase.config -> measurement
    features: dict[tuple, dict] = field(default_factory=dict)  # FeatureCase.config -> measurement
    # (backend, feature, device, dtype, mode) -> T -> {"median_s", "peak_mem_bytes"}: the feature sweep's estimates
    feature_series: dict[tuple, dict[int, dict]] = field(default_factory=dict)
    spent_s: dict[tuple, float] = field(default_factory=dict)  # (backend, device) -> wall seconds of its op cases
    summary: dict = field(default_factory=dict)  # merged into the JSON's top-level "attnbench" key

    def peak_flop_per_s(self, device: str, dtype: str) -> float:
        """The machine's matmul peak for (device, dtype), measured once per session."""
        key = (device, dtype)
        if key not in self.peak_flops:
            self.peak_flops[key] = matmul_peak_flop_per_s(device, getattr(torch, dtype))
        return self.peak_flops[key]

    def bandwidth_bytes_per_s(self, device: str) -> float:
        """The machine's memory bandwidth on `device` (a large copy), measured once per session."""
        if device not in self.bandwidths:
            self.bandwidths[device] = copy_bandwidth_bytes_per_s(device)
        return self.bandwidths[device]

    def flush(self, device: str) -> CacheFlush:
        if device not in self.flushes:
            self.flushes[device] = CacheFlush(device)
        return self.flushes[device]


def pytest_addoption(parser):
    g = parser.getgroup("attnbench", "attnbench benchmarks (pytest --benchmark-only)")
    g.addoption(
        "--bench-backends",
        default=None,
        help="comma-separated registered backends and/or package.module:function specs (default: all registered)",
    )
    g.addoption(
        "--bench-device", default=None, choices=["cpu", "cuda", "all"], help="default: cpu, plus cuda if present"
    )
    g.addoption(
        "--bench-dtypes", default=None, help="e.g. float32,bfloat16 (default: float32 on cpu; bf16,fp16 on cuda)"
    )
    g.addoption("--bench-T", default=None, help="sequence lengths (default: 128..4096 on cpu, 128..16384 on cuda)")
    g.addoption("--bench-quick", action="store_true", help="a small, fast sweep (smoke tests, attnbench run --quick)")
    g.addoption("--bench-baseline", default=DEFAULT_BASELINE, help="baseline backend of the interleaved ratios")
    g.addoption("--bench-interleaved-T", default=None, help="T of the interleaved ratios (default 1024,2048,4096 cpu)")
    g.addoption(
        "--bench-interleaved-threads",
        default=None,
        metavar="N|all",
        help="CPU threads while timing the interleaved ratios (default 1: reproducible between runs; all: torch's)",
    )
    g.addoption("--bench-max-call-s", type=float, default=None, help="skip cases estimated slower per call (s)")
    g.addoption(
        "--nanogpt",
        default=None,
        metavar="PATH",
        help="nanoGPT's model.py (or its folder): bench_model.py times its training step against this GPT's",
    )
    g.addoption("--bench-json", default=None, metavar="PATH", help="write the pytest-benchmark JSON atomically here")
    g.addoption(
        "--bench-config",
        default=None,
        metavar="PATH",
        help="run-config.json of `attnbench run`: its resolved plan (backends, devices, dtypes, each sweep's T, quick, "
        "the training's backends, recipe and target) in one file, instead of the --bench-* and --ttt-* options",
    )
    t = parser.getgroup("attnbench-ttt", "attnbench training to a target loss (bench_train_to_target.py)")
    t.addoption("--ttt-target", type=float, default=None, help="whole-split val loss to reach (default: 1.88)")
    t.addoption("--ttt-backends", default=None, help="comma-separated backends (default: sdpa,manual; --ttt-full: all)")
    t.addoption("--ttt-full", action="store_true", help="every backend (not just sdpa,manual) to the target")
    t.addoption("--ttt-quick", action="store_true", help="every backend; small model, loose target 2.5")
    t.addoption(
        "--ttt-recipe",
        default="fast",
        choices=list(RECIPES),
        help="fast: the tuned recipe; spine: the spine's; quick: as --ttt-quick; gqa_window: the tuned one with "
        "grouped-query attention and a sliding window (every backend that has both features)",
    )


def pytest_ignore_collect(collection_path: Path, config):
    """Without --benchmark-only, bench_*.py files are not even collected (nor imported)."""
    if fnmatch.fnmatch(collection_path.name, BENCH_FILES) and not config.getoption("benchmark_only", False):
        return True
    return None


def session_plan(config) -> RunConfig:
    """This session's resolved plan: --bench-config's file (resolved by the main job), else the --bench-* and --ttt-*
    options resolved the same way (RunConfig.resolve)."""
    path = config.getoption("bench_config", None)
    if path:
        return RunConfig.read(path)
    asked = RunConfig(
        backends=parse_backends(csv_list(config.getoption("bench_backends", None)), "--bench-backends"),
        T=parse_T(config.getoption("bench_T", None), "--bench-T"),
        dtype=parse_dtypes(csv_list(config.getoption("bench_dtypes", None)), "--bench-dtypes"),
        device=config.getoption("bench_device", None),
        quick=config.getoption("bench_quick", False),
        target=config.getoption("ttt_target", None),
        nanogpt=config.getoption("nanogpt", None),
    )
    stage = StageOptions(
        interleaved_T=parse_T(config.getoption("bench_interleaved_T") or None, "--bench-interleaved-T"),
        ttt_backends=csv_list(config.getoption("ttt_backends", None)),
        ttt_quick=config.getoption("ttt_quick", False),
        ttt_full=config.getoption("ttt_full", False),
        ttt_recipe=config.getoption("ttt_recipe"),
    )
    return asked.resolve(stage)


def _settings(config) -> BenchSettings:
    try:
        plan = session_plan(config)
        threads = parse_threads(config.getoption("bench_interleaved_threads"), INTERLEAVED_CPU_THREADS)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    max_call = config.getoption("bench_max_call_s")
    return BenchSettings(
        plan=plan,
        interleaved_cpu_threads=threads,
        baseline=config.getoption("bench_baseline"),
        max_call_s={d: max_call or DEVICE_DEFAULTS[d].max_call_s for d in plan.devices},
    )


STATE = pytest.StashKey[BenchState]()


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse, as PyTorch's CUDA caching allocator does.

    By default glibc serves blocks over 32 MiB (a (T, T) score buffer from T=2048 with 4 heads) with a fresh
    mmap, so every call page-faults and zero-fills its buffers again: measured here, that was half of
    manual's fwd+bwd time at T=4096 (1.0 s against 0.53 s), and it varied with the kernel's memory
    housekeeping between runs. Below 32 MiB glibc moves its mmap threshold after large frees, so whether a
    buffer is recycled depended on the process's history. No mmap and no trimming: after its first call, a
    call reuses memory, and its time measures the kernel. Peak memory is read from the profiler's allocator
    events, so it is unaffected. Between cases, `return_freed_cpu_memory` hands the free memory back.
    Returns whether the allocator is glibc and took the settings.
    """
    libc = glibc()
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters from glibc's malloc.h
    return bool(libc and libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, -1))  # -1: never trim


@pytest.fixture(autouse=True)
def return_freed_cpu_memory(pytestconfig):
    """After each benchmark case, return the memory it freed to the OS (glibc's malloc_trim): memory is reused
    within a case (its warm-up calls fault it in, its timed calls reuse it) but not kept from case to case.
    Measured on the default `pytest --benchmark-only`: max RSS 8.6 GB without this, 5.9 GB with it."""
    yield
    libc = glibc()
    if libc and pytestconfig.getoption("benchmark_only", default=False):
        libc.malloc_trim(0)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    state = BenchState(_settings(config))
    if config.getoption("benchmark_only", default=False):
        state.summary["cpu_memory_kept_for_reuse"] = keep_freed_cpu_memory()
    config.stash[STATE] = state
    if config.getoption("benchmark_only", default=False):
        check_version()
    # --benchmark-json opens (and truncates) its file at option parsing and writes it at the end in place
    write_json_atomically(config, config.getoption("bench_json"))


def pytest_unconfigure(config):
    commit_json(config)


@pytest.fixture(scope="session")
def bench_state(pytestconfig) -> BenchState:
    return pytestconfig.stash[STATE]


@pytest.fixture(scope="session")
def attnbench_summary(bench_state) -> dict:
    """A dict merged into the JSON's top-level "attnbench" key (e.g. train-to-target's "curve_agreement")."""
    return bench_state.summary


@pytest.fixture(scope="module")
def ttt_recipe(bench_state) -> Recipe:
    """The training-to-target recipe of this session (the plan's), with the target asked."""
    plan = bench_state.settings.plan
    recipe = RECIPES[plan.ttt_recipe]
    return recipe if plan.target is None else dataclasses.replace(recipe, target=plan.target)


def interleaved_modes(backends: list[str], device: str) -> list[str]:
    """fwd+bwd; fwd first when a selected backend is forward-only on the device (fwd is its only ratio)."""
    return ["fwd", "fwd+bwd"] if any(get_backend(b).why_no_backward(device) for b in backends) else ["fwd+bwd"]


def pytest_generate_tests(metafunc):
    cases = {"op_case", "interleaved_case", "feature_case", "train_step_case", "generate_case", "ttt_case"}
    if not cases & set(metafunc.fixturenames):
        return
    s = metafunc.config.stash[STATE].settings
    p = s.plan
    combos = [(dev, dt) for dev in p.devices for dt in p.dtypes[dev]]
    if "op_case" in metafunc.fixturenames:  # T ascending within a series: larger T are estimated from smaller
        cases = [
            OpCase(b, dev, dt, T, mode, graph)
            for dev, dt in combos
            for b in p.run_backends
            for mode in OP_MODES
            for graph in ((False, True) if dev == "cuda" else (False,))
            for T in p.Ts[dev]
            if not graph or T <= GRAPH_MAX_T or mode == "decode"
        ]
        metafunc.parametrize("op_case", cases, ids=[c.id for c in cases])
    if "interleaved_case" in metafunc.fixturenames:
        cases = [
            InterleavedCase(b, dev, dt, T, mode, baseline=s.baseline)
            for dev, dt in combos
            for mode in interleaved_modes(p.run_backends, dev)
            for T in p.interleaved_Ts[dev]
            for b in p.run_backends
        ]
        metafunc.parametrize("interleaved_case", cases, ids=[c.id for c in cases])
    if "feature_case" in metafunc.fixturenames:  # T ascending per (feature, mode): larger T estimated from smaller
        cases = [
            FeatureCase(b, spec, dev, dt, T, mode)
            for dev, dt in combos
            for spec in FEATURE_SPECS
            for mode in FEATURE_MODES
            for T in p.feature_Ts
            for b in dict.fromkeys([FEATURE_BASELINE, *p.feature_backends])  # the baseline's own row too
        ]
        metafunc.parametrize("feature_case", cases, ids=[c.id for c in cases])
    if "train_step_case" in metafunc.fixturenames:
        cases = [ModelCase(b, dev, dt) for dev, dt in combos for b in p.run_backends]
        metafunc.parametrize("train_step_case", cases, ids=[c.id for c in cases])
    if "generate_case" in metafunc.fixturenames:
        cases = [ModelCase(b, dev, dt, cache) for dev, dt in combos for b in p.run_backends for cache in (True, False)]
        metafunc.parametrize("generate_case", cases, ids=[c.id for c in cases])
    if "ttt_case" in metafunc.fixturenames:
        cases = [(b, dev) for dev in p.devices for b in p.ttt_backends]
        metafunc.parametrize("ttt_case", cases, ids=[f"{b}-{dev}" for b, dev in cases])


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = {
        "version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Top-level "attnbench": matmul peaks, op shapes, scaling exponents from the op rows, and test contributions."""
    state = config.stash[STATE]
    rows = [b.get("extra_info", {}) for b in output_json.get("benchmarks", [])]
    peaks = {f"{dev}/{dt}": v for (dev, dt), v in state.peak_flops.items()}
    summary = output_json.setdefault("attnbench", {})
    summary.update(
        {
            "peak_flop_per_s": next(iter(peaks.values()), None),  # the first measured (cpu/float32 by default)
            "peak_flop_per_s_by": peaks,  # "device/dtype" -> FLOP/s
            "bandwidth_bytes_per_s_by": dict(state.bandwidths),  # device -> copy bytes/s
            "op_shape": {
                dev: dict(zip("BHD", state.settings.shape(dev), strict=True)) for dev in state.settings.plan.devices
            },
            "scaling": scaling_table(rows),
            "feature_scaling": scaling_table(rows, kind="feature_op"),  # per feature too (bench_features.py)
        }
    )
    summary.update(state.summary)
