"""Timers of the op benchmark: the cache flush, per-call timing with work kept out, warm-up, CUDA paths."""

import statistics
import time

import pytest
import torch
from attnbench.bench.measuring.timers import (
    FLUSH_FACTOR,
    CacheFlush,
    cuda_graph,
    last_level_cache_bytes,
    parse_cache_size,
    time_calls,
    warm_up,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def test_parse_cache_size():
    assert parse_cache_size("32768K\n") == 32 * 2**20
    assert parse_cache_size("1M") == 2**20
    assert parse_cache_size("512") == 512


def test_flush_buffer_is_larger_than_the_last_level_cache():
    flush = CacheFlush("cpu")
    assert flush.buffer.numel() * flush.buffer.element_size() >= FLUSH_FACTOR * last_level_cache_bytes("cpu")
    before = flush.buffer.clone()
    flush()
    assert torch.equal(flush.buffer, before + 1)  # every element written, not just some


def test_flush_rewrites_a_buffer_larger_than_the_last_level_cache():
    """A flush reads and writes every element of a buffer FLUSH_FACTOR times the last-level cache, so nothing
    timed before it can still be cache-resident. (Its effect on a time is measured by the op benchmark's
    cold_over_warm column, not asserted here: on a shared VM's cache the size of that effect varies.)"""
    flush = CacheFlush("cpu")
    assert flush.buffer.numel() * flush.buffer.element_size() >= FLUSH_FACTOR * last_level_cache_bytes("cpu")
    flush()
    flush()
    assert bool((flush.buffer == 2).all())  # every element was read and written, each time


def test_time_calls_keeps_before_out_of_the_timed_region():
    times = time_calls(lambda: time.sleep(0.002), "cpu", 3, before=lambda: time.sleep(0.02))
    assert len(times) == 3 and all(0.002 <= t < 0.015 for t in times), times


def test_warm_up_reports_the_first_call_apart():
    calls = []

    def call():
        time.sleep(0.1 if not calls else 0.002)  # a compile on the first call, then steady
        calls.append(1)

    w = warm_up(call, "cpu")
    assert w.first_call_s >= 0.1 and w.settled_s < 0.05 and w.calls >= 3


def test_cuda_graph_needs_cuda():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        cuda_graph(lambda: None, "cpu")


@needs_cuda
def test_cuda_events_exclude_the_flush():
    x = torch.randn(4096, 4096, device="cuda")
    flush = CacheFlush("cuda")
    plain = statistics.median(time_calls(lambda: x @ x, "cuda", 10))
    flushed = statistics.median(time_calls(lambda: x @ x, "cuda", 10, before=lambda: [flush() for _ in range(20)]))
    assert flushed < 1.5 * plain  # twenty flushes before each call, none of them inside its events


@needs_cuda
def test_cuda_graph_replays_on_new_values():
    x = torch.ones(1024, device="cuda")
    replay, captured = cuda_graph(lambda: x * 2, "cuda")
    x.fill_(3.0)
    replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, torch.full_like(x, 6.0))
