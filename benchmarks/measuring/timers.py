"""How a benchmark times calls: warm or cold caches, a synchronizing wall clock on CPU, CUDA events on CUDA.

- Cold: before every timed call a buffer larger than the last-level cache (CPU: L3, from sysfs; CUDA: the L2)
  is written, outside the timed region, so the call reads its inputs from memory, not from a cache that the
  previous call filled. Warm: no flush; the call finds what the previous one left in the caches.
- CPU: perf_counter around the call, after a synchronize. CUDA: an event recorded before and after each call
  on the current stream (the flush is queued before the start event, so the events exclude it); one
  synchronize at the end reads them all, so no host round trip sits between calls.
- Warm-up: calls until two in a row agree, so first-call and compile costs stay out of the timed rounds.
- CUDA graphs: a short call is captured once and replayed, which removes the launch overhead that otherwise
  dominates decode-sized calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .measure import synchronize, time_call

FLUSH_FACTOR = 2  # the flush buffer is this many times the last-level cache: every line of the cache is evicted
CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_LLC_BYTES = 64 * 2**20  # when sysfs says nothing: larger than the L3 of most server CPUs


def parse_cache_size(text: str) -> int:
    """Bytes of a sysfs cache size such as '32768K' or '1M'."""
    text = text.strip()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def last_level_cache_bytes(device: torch.device | str) -> int:
    """Size of the largest cache between the cores and memory: CPU from sysfs (the largest data or unified
    cache of cpu0), CUDA the device's L2."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for index in CPU_CACHE_DIR.glob("index*"):
        try:
            if (index / "type").read_text().strip() in ("Data", "Unified"):
                sizes.append(parse_cache_size((index / "size").read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=FALLBACK_LLC_BYTES)


class CacheFlush:
    """Calling it evicts the caches: it adds one to every element of a buffer FLUSH_FACTOR times the
    last-level cache. A read-modify-write, not a fill: large fills may use streaming stores that bypass
    the cache and so evict nothing."""

    def __init__(self, device: torch.device | str, nbytes: int | None = None):
        self.device = torch.device(device)
        self.nbytes = nbytes or FLUSH_FACTOR * last_level_cache_bytes(self.device)
        self.buffer = torch.zeros(self.nbytes // 4, dtype=torch.int32, device=self.device)

    def __call__(self) -> None:
        self.buffer.add_(1)


def time_calls(
    call: Callable[[], object], device: torch.device | str, n: int, before: Callable[[], None] | None = None
) -> list[float]:
    """Seconds of each of n calls; `before` (a cache flush, an input refill) runs ahead of every call,
    outside the timed region. CUDA: events on the current stream; CPU: a synchronizing wall clock."""
    device = torch.device(device)
    if device.type != "cuda":
        times = []
        for _ in range(n):
            if before:
                before()
            times.append(time_call(call, device))
        return times
    events = []
    for _ in range(n):
        if before:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]  # elapsed_time is in milliseconds


@dataclass(frozen=True)
class WarmUp:
    first_call_s: float  # the first call alone: compiles, autotuning, allocator growth
    calls: int  # calls made, the first included, until two in a row agreed
    settled_s: float  # the last warm-up call


def warm_up(
    call: Callable[[], object],
    device: torch.device | str,
    *,
    rel_tol: float = 0.2,
    max_calls: int = 10,
    max_s: float = 30.0,
    before: Callable[[], None] | None = None,
) -> WarmUp:
    """Call until two consecutive calls agree within rel_tol (or max_calls / max_s seconds are spent)."""
    t0 = time.perf_counter()
    first = prev = time_calls(call, device, 1, before)[0]
    calls = 1
    while calls < max_calls and time.perf_counter() - t0 < max_s:
        t = time_calls(call, device, 1, before)[0]
        calls += 1
        settled = abs(t - prev) <= rel_tol * max(t, prev)
        prev = t
        if settled and calls > 2:  # the first call never counts as settled: it may include a compile
            break
    return WarmUp(first, calls, prev)


def cuda_graph(call: Callable[[], object], device: torch.device | str, pool=None) -> tuple[Callable[[], None], object]:
    """Capture `call` once into a CUDA graph; returns (replay, what the captured call returned). The graph
    reads and writes the same memory at every replay: refill the inputs in place to give it new values.
    `pool` (torch.cuda.graph_pool_handle()) shares a memory pool with graphs captured into it before."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, not {device.type}")
    side = torch.cuda.Stream(device)  # capture wants its warm-up off the default stream
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        captured = call()
    synchronize(device)
    return graph.replay, captured
