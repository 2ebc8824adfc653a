"""Serving layouts (attnbench.layouts): paged decode throughput against batch x context length, and ragged
(varlen) prefill, per backend (its own layout implementation where it declares one, else the default over its
dense call), on CPU at small sizes in seconds and at serving sizes on CUDA.

paged_decode rows: B sequences of L cached tokens each in shuffled pages of PAGE_SIZE, one query token each
(Hq query heads over Hkv cache heads). A decode step reads the whole cache once, so it is memory bound: the row
carries tokens per second, the bytes one step moves per token (the sequence's keys and values, its query and
output, each once) and the memory-bound roofline (roofline.py) with the fraction of it reached.
varlen_prefill rows: a ragged batch of causal sequences of mixed lengths, packed; FLOPs count the (query, key)
pairs each sequence's own causal mask lets through (roofline.mask_visible_pairs), not a padded batch's.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnbench import attend_paged, attend_varlen, get_backend
from attnbench.bench.measuring.measure import synced, unavailable_reason
from attnbench.bench.measuring.roofline import attention_bytes, mask_visible_pairs, pairs_flops, roofline
from attnbench.bench.schema import make_row

HQ, HKV, D, PAGE_SIZE = 8, 2, 64, 16  # a GQA 4:1 decode, the common page size
DECODE_SIZES = {  # device -> (batch, context length) grid
    "cpu": [(B, L) for B in (1, 8) for L in (256, 1024)],
    "cuda": [(B, L) for B in (1, 16, 64) for L in (1024, 8192, 32768)],
}
PREFILL_LENGTHS = {  # device -> the ragged batch's sequence lengths
    "cpu": (17, 128, 300, 64, 1),
    "cuda": (17, 128, 3000, 640, 1, 8192, 257, 1024),
}


def decode_bytes_per_token(L: int, hq: int, hkv: int, d: int, dtype: torch.dtype) -> int:
    """Bytes one decode step moves per sequence: its L keys and values (Hkv heads) and its one query and output
    row (Hq heads), each once; page tables and lengths are a few bytes and left out."""
    return attention_bytes(1, hkv, 0, L, d, dtype) + attention_bytes(1, hq, 1, 0, d, dtype)


def varlen_visible_pairs(lengths, hq: int, causal: bool = True) -> int:
    """(query, key) pairs a ragged batch attends, summed over sequences and query heads: each sequence's own mask."""
    return sum(mask_visible_pairs(1, hq, n, n, causal=causal) for n in lengths if n)


def paged_decode_inputs(B: int, L: int, device: str, dtype: torch.dtype, seed: int = 0):
    """q (B, 1, Hq, D), k_cache/v_cache (pages, PAGE_SIZE, Hkv, D), block_table (B, pages per sequence), lengths."""
    g = torch.Generator().manual_seed(seed)
    per_seq = math.ceil(L / PAGE_SIZE)
    q = torch.randn(B, 1, HQ, D, generator=g).to(device, dtype)
    caches = [torch.randn(B * per_seq, PAGE_SIZE, HKV, D, generator=g).to(device, dtype) for _ in "kv"]
    table = torch.randperm(B * per_seq, generator=g).reshape(B, per_seq).to(device, torch.int32)  # scattered pages
    return q, *caches, table, torch.full((B,), L, dtype=torch.int32, device=device)


def varlen_inputs(lengths, device: str, dtype: torch.dtype, seed: int = 0):
    """q (total, Hq, D), k, v (total, Hkv, D), cu_seqlens (B + 1,) int32 for both, and the longest length."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, D, generator=g).to(device, dtype) for h in (HQ, HKV, HKV))
    cu = torch.tensor((0, *torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32, device=device)
    return q, k, v, cu, cu, max(lengths), max(lengths)


def _runnable(bench_state, backend_name: str, device: str):
    """(backend, dtype) for this session, or skip with the reason (device, dtype, or no GQA)."""
    plan = bench_state.settings.plan
    if device not in plan.devices:
        pytest.skip(f"{device} is not benchmarked in this session")
    if plan.run_backends and backend_name not in plan.run_backends:
        pytest.skip(f"{backend_name} is not selected")
    backend, dtype = get_backend(backend_name), getattr(torch, plan.dtypes[device][0])
    if reason := unavailable_reason(backend, device, dtype) or backend.why_no_feature("gqa", device):
        pytest.skip(reason)
    return backend, dtype


def _time(benchmark, fn, device: str) -> float:
    """Median seconds of fn over a few rounds after a warm-up (pytest-benchmark's own stats)."""
    benchmark.pedantic(synced(fn, device), rounds=5 if device == "cpu" else 20, warmup_rounds=1)
    return benchmark.stats.stats.median


BACKENDS = ["sdpa", "manual", "chunked", "flash_attn", "flash_attn_kvcache"]  # the last two: their own layouts
DECODE_CASES = [(device, B, L) for device, grid in DECODE_SIZES.items() for B, L in grid]


def _record(benchmark, bench_state, kind: str, backend, device: str, dtype, median: float, flops, moved, **fields):
    """The row: what was measured (make_row's identity fields among `fields`), its median, the roofline of its
    FLOPs and bytes moved, and the fraction of that roofline reached."""
    name = str(dtype).removeprefix("torch.")
    roof = roofline(flops, moved, bench_state.peak_flop_per_s(device, name), bench_state.bandwidth_bytes_per_s(device))
    threads = torch.get_num_threads()
    row = make_row(
        kind, backend=backend.name, device=device, dtype=name, Hq=HQ, Hkv=HKV, D=D, threads=threads, **fields
    )
    benchmark.extra_info.update(row, median_s=median, fraction_of_roofline=roof.roofline_min_s / median)
    benchmark.extra_info.update(roof.as_row())


@pytest.mark.parametrize("device, B, L", DECODE_CASES, ids=[f"{d}-B{B}-L{L}" for d, B, L in DECODE_CASES])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_paged_decode(benchmark, bench_state, backend_name, device, B, L):
    backend, dtype = _runnable(bench_state, backend_name, device)
    inputs = paged_decode_inputs(B, L, device, dtype)
    with torch.no_grad():
        median = _time(benchmark, lambda: attend_paged(*inputs, backend=backend), device)
    per_token = decode_bytes_per_token(L, HQ, HKV, D, dtype)
    flops = pairs_flops(B * HQ * L, D)  # one query row per sequence sees its L keys
    _record(
        benchmark, bench_state, "paged_decode", backend, device, dtype, median, flops, B * per_token,
        B=B, L=L, page_size=PAGE_SIZE, native=backend.paged is not None, tokens_per_s=B / median,
        bytes_per_token=per_token,
    )  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_varlen_prefill(benchmark, bench_state, backend_name, device):
    backend, dtype = _runnable(bench_state, backend_name, device)
    lengths = PREFILL_LENGTHS[device]
    inputs = varlen_inputs(lengths, device, dtype)
    with torch.no_grad():
        median = _time(benchmark, lambda: attend_varlen(*inputs, backend=backend), device)
    pairs = varlen_visible_pairs(lengths, HQ)
    moved = sum(attention_bytes(1, HQ, n, 0, D, dtype) + attention_bytes(1, HKV, 0, n, D, dtype) for n in lengths)
    _record(
        benchmark, bench_state, "varlen_prefill", backend, device, dtype, median, pairs_flops(pairs, D), moved,
        B=len(lengths), tokens=sum(lengths), native=backend.varlen is not None, visible_pairs=pairs,
        flop_per_s=pairs_flops(pairs, D) / median, tokens_per_s=sum(lengths) / median,
    )  # fmt: skip
