"""The integrity layer of the op benchmark: planted cheating backends are rejected, honest ones are not."""

import math

import cheaters
import pytest
import torch
from attnbench import Backend, get_backend
from attnbench.bench.measuring import op_timing, timers
from attnbench.bench.measuring.integrity import (
    IMPOSSIBLE_FRACTION,
    POOL_SIZE,
    LiveInputs,
    check_results,
    check_time,
    heads_to_check,
    poison_freed_memory,
)
from attnbench.bench.measuring.measure import attention_call, matmul_peak_flop_per_s
from attnbench.bench.measuring.op_timing import OpShape, time_op
from attnbench.bench.measuring.roofline import attention_bytes, attention_flops, copy_bandwidth_bytes_per_s, roofline
from attnbench.bench.measuring.timers import CacheFlush
from cheaters import early_return_on_repeat, memoize_by_content, memoize_by_pointer, side_stream

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
WRONG = "result differs from the reference on fresh inputs"
IMPOSSIBLE = "impossible time"


@pytest.fixture(scope="module")
def roofs():
    """The benchmark's own measurements of this machine: matmul peak (float32) and copy bandwidth."""
    return {"cpu": (matmul_peak_flop_per_s("cpu", torch.float32), copy_bandwidth_bytes_per_s("cpu"))}


def timed(
    backend, mode, roofs, *, T=256, device="cpu", dtype=torch.float32, B=1, H=4, D=64, graph=False, budget_s=0.05
):
    if device not in roofs:
        roofs[device] = (matmul_peak_flop_per_s(device, dtype), copy_bandwidth_bytes_per_s(device))
    peak, bandwidth = roofs[device]
    return time_op(
        backend,
        mode,
        OpShape.for_mode(mode, B, H, T, D),
        device,
        dtype,
        peak_flop_per_s=peak,
        bandwidth_bytes_per_s=bandwidth,
        flush=CacheFlush(device),
        budget_s=budget_s,
        graph=graph,
        measure_memory=False,
    )


@pytest.mark.parametrize(
    "name, mode",
    [(b, "fwd") for b in ("manual", "per_head_loop", "chunked", "sdpa", "sdpa_math", "sdpa_flash")]
    + [(b, m) for b in ("manual", "sdpa_flash") for m in ("fwd+bwd", "decode")],
)
def test_honest_backends_pass(name, mode, roofs):
    t = timed(get_backend(name), mode, roofs)
    assert t.problems == [], t.problems
    assert t.row()["integrity"] == "ok"


def test_memoize_by_pointer_is_rejected(roofs):
    t = timed(memoize_by_pointer(), "fwd", roofs)
    assert any(p.startswith(WRONG) for p in t.problems), t.problems  # stale output for new values in old memory
    assert any(p.startswith(IMPOSSIBLE) for p in t.problems), t.problems
    assert t.row()["integrity"] != "ok"


@pytest.mark.parametrize("mode", ["fwd", "decode"])
def test_early_return_on_repeat_is_rejected(mode, roofs):
    t = timed(early_return_on_repeat(), mode, roofs)
    assert any(p.startswith(WRONG) for p in t.problems), t.problems


def test_early_return_on_repeat_is_rejected_in_fwd_bwd(roofs):
    t = timed(early_return_on_repeat(), "fwd+bwd", roofs)
    assert any("returned no result" in p for p in t.problems), t.problems  # the cached output reaches no input


class AttentionClock:
    """The timer, injected: a timed call takes the roofline time once per attention it really computed (what
    the fastest honest kernel would take) and nothing otherwise, whatever the machine's load."""

    def __init__(self, roof_s: float):
        self.roof_s, self.computed, self.calls = roof_s, 0, 0

    def count(self, attention):
        def counted(*args, **kwargs):
            self.computed += 1
            return attention(*args, **kwargs)

        return counted

    def time_calls(self, call, device, n, before=None):
        times = []
        for _ in range(n):
            if before:
                before()
            computed = self.computed
            call()
            self.calls += 1
            times.append((self.computed - computed) * self.roof_s)
        return times


@pytest.mark.parametrize("cheats", [True, False], ids=["memoize_by_content", "honest"])
def test_memoize_by_content_is_rejected_as_impossible(cheats, roofs, monkeypatch):
    """Right on every input (the fresh-input check passes), but a repeated input costs three sums: most timed
    calls compute no attention, the median is one of them, and that alone rejects it. The same clock passes a
    backend that computes every call."""
    B, H, T, D = 1, 4, 256, 64  # what timed() runs
    flops, nbytes = attention_flops(B, H, T, T, D, "fwd"), attention_bytes(B, H, T, T, D, torch.float32, "fwd")
    clock = AttentionClock(roofline(flops, nbytes, *roofs["cpu"]).roofline_min_s)
    monkeypatch.setattr(cheaters, "manual", clock.count(cheaters.manual))
    monkeypatch.setattr(op_timing, "time_calls", clock.time_calls)
    monkeypatch.setattr(timers, "time_calls", clock.time_calls)  # warm-up too
    backend = memoize_by_content() if cheats else Backend("counted_manual", cheaters.manual, "manual, counted")
    t = timed(backend, "fwd", roofs)
    assert not any(p.startswith(WRONG) for p in t.problems), t.problems
    if cheats:
        assert clock.computed <= POOL_SIZE + 1, clock.computed  # each pool set once, and one fresh input set
        assert clock.calls > 2 * clock.computed  # the cache hits are the median
        assert any(p.startswith(IMPOSSIBLE) for p in t.problems), t.problems
    else:
        assert clock.computed >= clock.calls and t.problems == [], t.problems


@needs_cuda
def test_side_stream_is_rejected(roofs):
    """Work on a stream the timer's events never wait for: the events time the launch alone. The shape is
    large enough (3 ms of roofline on an H100) that a launch cannot pass for it."""
    t = timed(side_stream(), "fwd", roofs, device="cuda", dtype=torch.float16, B=4, H=16, T=8192, D=128)
    assert any(p.startswith(IMPOSSIBLE) for p in t.problems), t.problems


@needs_cuda
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd", "decode"])
def test_cuda_graph_rows_of_an_honest_backend_pass(mode, roofs):
    t = timed(get_backend("manual"), mode, roofs, device="cuda", dtype=torch.float16, graph=True)
    assert t.problems == [] and t.graph and t.timer == "cuda events"


@needs_cuda
def test_cuda_graph_row_of_a_memoizer_is_rejected(roofs):
    t = timed(memoize_by_pointer(), "fwd", roofs, device="cuda", dtype=torch.float16, graph=True)
    assert any(p.startswith(WRONG) for p in t.problems), t.problems


def test_refill_keeps_the_memory_and_changes_the_values():
    inputs = LiveInputs.create(1, 2, 8, 8, 4, "cpu", torch.float32, requires_grad=True)
    pointers = [t.data_ptr() for t in inputs.tensors]
    seen = []
    for _ in range(4):
        inputs.refill()
        assert [t.data_ptr() for t in inputs.tensors] == pointers
        seen.append(inputs.q.detach().clone())
    assert all(not torch.equal(a, b) for a, b in zip(seen, seen[1:], strict=False))  # never one set twice in a row
    inputs.fill_fresh()
    assert [t.data_ptr() for t in inputs.tensors] == pointers
    assert all(not torch.equal(inputs.q, s[0]) for s in inputs.pool)  # the check's values were never timed
    assert inputs.q.requires_grad and inputs.q.is_leaf


def test_check_results_names_a_wrong_output_and_passes_a_right_one():
    inputs = LiveInputs.create(1, 2, 16, 16, 8, "cpu", torch.float32, requires_grad=True)
    inputs.fill_fresh()
    right = attention_call(get_backend("manual"), "fwd+bwd", *inputs.tensors)()
    assert check_results(right, inputs, context="") is None
    wrong = (right[0], right[1], right[2] * 1.01, right[3])  # dk off by 1%
    assert check_results(wrong, inputs, context="").startswith(f"{WRONG}: dk:")
    nan = (torch.full_like(right[0], math.nan),)
    assert check_results(nan, inputs, context="").startswith(f"{WRONG}: out:")


def test_heads_to_check_fits_the_budget():
    assert heads_to_check(2, 4, 128, 128, seed=0).tolist() == list(range(8))  # small: every head
    few = heads_to_check(2, 8, 4096, 4096, seed=0)  # 128 MiB of float64 scores per head: two fit in 256 MiB
    assert len(few) == 2 and len(set(few.tolist())) == 2 and all(0 <= i < 16 for i in few.tolist())
    assert len(heads_to_check(1, 1, 65536, 65536, seed=0)) == 1  # never none


def test_check_time_rejects_what_the_roofline_forbids():
    roof = roofline(flops=1e9, bytes_moved=10**8, peak_flop_per_s=1e11, bandwidth_bytes_per_s=1e9)  # 10 ms, 100 ms
    assert roof.bound == "memory" and roof.compute_min_s == pytest.approx(0.01)
    assert check_time(0.01, 0.1, roof) is None  # at the roofs
    assert check_time(0.005, 0.1, roof) is None  # warm beats the memory roof (cache), not the compute one
    assert check_time(IMPOSSIBLE_FRACTION * 0.01 * 0.9, 0.1, roof).startswith("impossible time: warm")
    assert check_time(0.01, IMPOSSIBLE_FRACTION * 0.1 * 0.9, roof).startswith("impossible time: cold")


def test_poison_is_cuda_only():
    assert poison_freed_memory([(torch.Size([4]), torch.float32)], "cpu") is False


@needs_cuda
def test_poisoned_memory_reaches_the_next_allocation():
    shape = (1, 8, 1024, 64)
    torch.ones(shape, dtype=torch.float16, device="cuda")  # a block of that size, freed
    assert poison_freed_memory([(torch.Size(shape), torch.float16)], "cuda")
    assert torch.isnan(torch.empty(shape, dtype=torch.float16, device="cuda")).all()
