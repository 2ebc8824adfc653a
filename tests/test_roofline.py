"""The roofline: FLOPs and minimum bytes per mode, decode rows, the measured bandwidth, which roof binds."""

import pytest
import torch
from attnbench.bench.measuring import roofline as rl
from attnbench.bench.measuring.roofline import attention_bytes, attention_flops, roofline, visible_pairs
from attnbench.bench.measuring.timers import FLUSH_FACTOR, last_level_cache_bytes


def test_visible_pairs():
    assert visible_pairs(8, 8) == 32  # T^2 / 2, the square convention
    assert visible_pairs(1, 4096) == 4095.5  # decode: the one query sees (about) every key
    with pytest.raises(ValueError):
        visible_pairs(5, 4)


def test_decode_flops_are_linear_in_Tk():
    assert attention_flops(1, 2, 1, 1000, 64) == 4 * 2 * 64 * 999.5
    assert attention_flops(1, 2, 1, 2000, 64) / attention_flops(1, 2, 1, 1000, 64) == pytest.approx(2, rel=1e-3)


def test_minimum_bytes_per_mode():
    B, H, Tq, Tk, D = 2, 3, 5, 7, 16
    per_row = B * H * D * 2  # bytes of one row of every head, bfloat16
    assert attention_bytes(B, H, Tq, Tk, D, torch.bfloat16, "fwd") == per_row * (Tq + Tk + Tk + Tq)  # q, k, v, out
    # + dO (Tq), dq (Tq), dk (Tk), dv (Tk)
    assert attention_bytes(B, H, Tq, Tk, D, torch.bfloat16, "fwd+bwd") == per_row * (4 * Tq + 4 * Tk)
    with pytest.raises(ValueError, match="mode"):
        attention_bytes(B, H, Tq, Tk, D, torch.float32, "decode")


def test_bound_against_the_ridge_point():
    peak, bandwidth = 1e12, 1e11  # ridge point 10 FLOP/byte
    square = roofline(
        attention_flops(1, 8, 4096, 4096, 64), attention_bytes(1, 8, 4096, 4096, 64, torch.float16), peak, bandwidth
    )
    decode = roofline(
        attention_flops(1, 8, 1, 4096, 64), attention_bytes(1, 8, 1, 4096, 64, torch.float16), peak, bandwidth
    )
    assert square.ridge_point == decode.ridge_point == 10
    assert square.bound == "compute" and square.roofline_min_s == square.compute_min_s > square.memory_min_s
    assert decode.bound == "memory" and decode.roofline_min_s == decode.memory_min_s > decode.compute_min_s
    assert decode.arithmetic_intensity == pytest.approx(1.0, rel=1e-3)  # 4 D FLOPs per key row of 2 * 2 D bytes
    with pytest.raises(ValueError):
        roofline(1.0, 0, peak, bandwidth)


def test_copy_bandwidth_counts_read_and_write_of_the_best_copy(monkeypatch):
    times = iter([9.0, 0.5, 0.25, 0.4])  # warm-up, then three timed copies
    monkeypatch.setattr(rl, "time_call", lambda fn, device: next(times))
    assert rl.copy_bandwidth_bytes_per_s("cpu", nbytes=2**20, reps=3) == 2 * 2**20 / 0.25


def test_measured_bandwidth_streams_through_memory(monkeypatch):
    """The measuring copy streams through memory: its buffer is at least what the benchmark's own cache flush
    writes to evict the caches (FLUSH_FACTOR x the last-level cache), so no timed copy is served from a cache.
    The timer is injected (each copy takes 1 s), so the bandwidth returned gives the bytes copied."""
    monkeypatch.setattr(rl, "time_call", lambda fn, device: 1.0)
    nbytes = rl.copy_bandwidth_bytes_per_s("cpu", reps=1) / 2  # read + write of the buffer per second
    assert nbytes >= FLUSH_FACTOR * last_level_cache_bytes("cpu")
