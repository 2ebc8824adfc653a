"""What the benchmarks measure, and how: synced timing, peak memory, the machine's matmul peak, op inputs.

FLOPs and bytes moved (the roofline) are in roofline.py.

With the contract's masks (window, documents, mask_mod) the feature sweep counts the visible (query, key) pairs
of the actual mask instead (visible_pairs, attention_flops): forward = 4 * D * pairs.

Peak memory is the most memory a call allocates on top of what existed before it:
- CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the allocation at the start.
- CPU:  the profiler's allocator events (profile_memory=True): the peak of the running sum of the
        allocation (+) and free (-) events of the call. Allocator-level, so repeatable to the byte.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from attnbench import Backend
from torch.profiler import ProfilerActivity, profile

MODES = ("fwd", "fwd+bwd")


def score_matrix_bytes(B: int, H: int, T: int, dtype: torch.dtype) -> int:
    """Bytes of one materialized (B, H, T, T) score matrix."""
    return B * H * T * T * torch.empty((), dtype=dtype).element_size()


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: torch.device | str) -> Callable[[], None]:
    """fn followed by a device synchronization, so that a wall-clock timer around it sees the finished work."""
    device = torch.device(device)

    def call():
        fn()
        synchronize(device)

    return call


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall seconds of one call of fn, synchronized before and after (a syncing timer)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """The most memory fn allocates on top of what was allocated when it started (see the module doc)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type == "cpu":
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return peak_of_memory_events(prof)
    raise ValueError(f"peak memory is measured on cpu and cuda, not {device.type}")


def peak_of_memory_events(prof: profile) -> int:
    """Peak of the running sum of the profiler's '[memory]' events (+bytes allocated, -bytes freed), in time order."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def matmul_peak_flop_per_s(
    device: torch.device | str, dtype: torch.dtype, n: int | None = None, reps: int = 3
) -> float:
    """The machine's dense matmul rate: best of `reps` timed (n x n) @ (n x n) products after one warm-up."""
    device = torch.device(device)
    if n is None:  # big enough to be compute bound, small enough to take well under a second
        n = 8192 if device.type == "cuda" else (2048 if dtype == torch.float32 else 1024)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    time_call(lambda: a @ b, device)
    best = min(time_call(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best


def attention_inputs(
    B: int,
    H: int,
    T: int,
    D: int,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    requires_grad: bool,
    seed: int = 0,
    Tq: int | None = None,
    Hkv: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded q (B, H, Tq, D), k, v (B, Hkv, T, D) and an output gradient `do` shaped like q (Tq: T unless given,
    1 for a decode step; Hkv: H unless given, fewer for grouped-query attention)."""
    g = torch.Generator(device=device).manual_seed(seed)
    rows = ((H, Tq or T), (Hkv or H, T), (Hkv or H, T), (H, Tq or T))  # (heads, rows) of q, k, v, do
    q, k, v, do = (torch.randn(B, h, n, D, device=device, dtype=dtype, generator=g) for h, n in rows)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, do


def attention_call(backend: Backend, mode: str, q, k, v, do, **features) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A no-argument call of `backend` in `mode`: 'fwd' (inference, inputs without grad) or 'fwd+bwd', with the
    contract's optional `features` (e.g. window=256) passed on. It returns what it computed, (out,) or
    (out, dq, dk, dv), for the integrity check to inspect."""
    if mode == "fwd":

        def call():
            return (backend(q, k, v, causal=True, **features),)

    elif mode == "fwd+bwd":

        def call():
            out = backend(q, k, v, causal=True, **features)
            out.backward(do)
            grads = q.grad, k.grad, v.grad
            q.grad = k.grad = v.grad = None  # the next call starts from no gradient (none accumulates)
            return out.detach(), *grads

    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return call


def available_memory_bytes(device: torch.device | str) -> int:
    """Memory a benchmark may still use: free device memory on CUDA, MemAvailable (else physical RAM) on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated q-quantile (0 <= q <= 1) of xs, like numpy.percentile's default."""
    if not xs:
        raise ValueError("quantile of an empty list")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def unavailable_reason(backend: Backend, device: str, dtype: torch.dtype, *, backward: bool = False) -> str | None:
    """Why `backend` cannot run on (device, dtype) here, or None: no CUDA on this machine, or the backend's reason;
    with `backward`, also a forward-only backend's reason (its fwd+bwd cases and training are skipped with it)."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if backward and (reason := backend.why_no_backward(device)):
        return f"forward-only: {reason}"
    return backend.why_unsupported(device, dtype)


def extrapolate(T: int, measured: dict[int, float], exponent: float = 2.0) -> tuple[int, float] | None:
    """(T_prev, value * (T / T_prev)^exponent) from the largest measured T_prev < T; None if none is smaller."""
    smaller = [t for t in measured if t < T]
    if not smaller:
        return None
    t_prev = max(smaller)
    return t_prev, measured[t_prev] * (T / t_prev) ** exponent


def plan_rounds(call_s: float, budget_s: float, min_rounds: int = 3, max_rounds: int = 50, min_round_s: float = 1e-3):
    """(rounds, iterations) for pedantic(): iterations make one round last >= min_round_s (timer resolution and
    call overhead), rounds fill budget_s, clamped to [min_rounds, max_rounds]."""
    call_s = max(call_s, 1e-9)
    iterations = min(100, max(1, math.ceil(min_round_s / call_s)))
    rounds = int(budget_s / (call_s * iterations))
    return max(min_rounds, min(max_rounds, rounds)), iterations


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to n inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def case_info(kind: str, c, shape: tuple[int, int, int], threads: int | None = None) -> dict:
    """The extra_info fields that say what an op-shaped row measured (an OpCase or InterleavedCase `c`);
    threads: the CPU threads it ran with (default: torch's current setting)."""
    B, H, D = shape
    return {
        "kind": kind,
        "backend": c.backend,
        "device": c.device,
        "dtype": c.dtype,
        "mode": c.mode,
        "B": B,
        "H": H,
        "T": c.T,
        "D": D,
        "threads": threads or torch.get_num_threads(),
    }
