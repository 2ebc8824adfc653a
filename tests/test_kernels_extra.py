"""Algorithm-specific tests of the kernels helper's backends (the registry suite covers their contract).

- chunked: block sizes that do not divide T, ragged tails, Tq < Tk, dropout masks regenerated in the backward,
  and O(T) memory of forward and backward (profiler allocator events vs the analytic score-matrix size).
- compiled_manual / flex: the compiled paths that the suite's short hypothesis shapes do not reach.
- sdpa: a short query block (decode, chunked prefill) computes its own rows only, not the padded square.
- triton_flash: the Triton kernels under TRITON_INTERPRET=1 on CPU tensors (skipped without triton).
"""

from __future__ import annotations

import pytest
import torch
from attnbench import AttentionInputError, chunked, compiled_manual, flex, get_backend
from attnbench.bench.measuring.measure import peak_memory_bytes, score_matrix_bytes
from attnbench.conformance.properties import PROPERTIES, run_property
from attnbench.conformance.reference import attention_formula
from attnbench.conformance.strategies import toy_sizes_only
from spine_helpers import needs_triton


def _qkv(b, h, tq, tk, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(b, h, tk, d, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(b, h, tk, d, generator=g, dtype=dtype).requires_grad_()
    return q, k, v


def _out_and_grads(fn, q, k, v, **kw):
    out = fn(q, k, v, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))


# ------------------------------------------------------------------------------------------------ chunked

FP64_NOISE = 1e-12  # float64 rounding noise of these O(1)-sized sums: a wrong block shows up as O(1)


@pytest.mark.parametrize("block", [1, 3, 7, 16, 64])
@pytest.mark.parametrize(("tq", "tk", "causal"), [(29, 29, True), (5, 29, True), (1, 29, True), (13, 29, False)])
def test_chunked_any_block_size_matches_formula(block, tq, tk, causal):
    """Blocks that do not divide Tk (ragged tail), blocks larger than Tk, Tq < Tk: same output and grads."""
    q, k, v = _qkv(2, 3, tq, tk, 5)
    got = _out_and_grads(chunked.chunked_attention, q, k, v, causal=causal, block=block)
    want = _out_and_grads(attention_formula, q, k, v, causal=causal)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert (a - b).abs().max() <= FP64_NOISE, f"{name} differs with block={block}, Tq={tq}, Tk={tk}"


def test_chunked_rejects_bad_block():
    q, k, v = _qkv(1, 1, 4, 4, 2)
    with pytest.raises(AttentionInputError, match="block"):
        chunked.chunked_attention(q, k, v, block=0)


def test_chunked_dropout_backward_replays_forward_masks():
    """With the RNG seeded the same, the backward regenerates each block's keep-mask: gradcheck passes."""

    def f(q, k, v):
        torch.manual_seed(3)
        return chunked.chunked_attention(q, k, v, dropout_p=0.3, block=3)

    q, k, v = _qkv(1, 2, 5, 8, 3)
    assert not torch.equal(f(q, k, v), attention_formula(q, k, v)), "dropout changed nothing"
    assert torch.autograd.gradcheck(f, (q, k, v))


def _chunked_peaks(T, block, B=1, H=2, D=8):
    """Peak bytes allocated by chunked's forward (no grad) and forward+backward at length T, fp32."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    with torch.no_grad():
        fwd = peak_memory_bytes(lambda: chunked.chunked_attention(q, k, v, block=block))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    both = peak_memory_bytes(lambda: chunked.chunked_attention(q, k, v, block=block).backward(do))
    return fwd, both


def test_chunked_memory_is_linear_in_T():
    """Peak memory (profiler allocator events) grows ~linearly in T and stays far below one (T, T) matrix;
    the same measurement sees manual's materialized score matrix (so it is not blind)."""
    T1, T2, block = 512, 1024, 32  # small D and block: the O(T (D + block)) terms stay far below T^2
    (f1, b1), (f2, b2) = _chunked_peaks(T1, block), _chunked_peaks(T2, block)
    scores = score_matrix_bytes(1, 2, T2, torch.float32)
    for name, p1, p2 in (("forward", f1, f2), ("forward+backward", b1, b2)):
        assert p2 / p1 < 2.5, f"{name} peak grows like T^{torch.tensor(p2 / p1).log2():.2f} (x{p2 / p1:.2f} for 2x T)"
        assert p2 < scores / 4, f"{name} peak {p2} B is not well below the (T, T) score matrix ({scores} B)"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, T2, 8, generator=g) for _ in range(3))
    with torch.no_grad():
        assert peak_memory_bytes(lambda: get_backend("manual")(q, k, v)) >= scores


# ---------------------------------------------------------------------------------- compiled backends


def test_compiled_manual_compiled_path_matches_formula():
    """At Tk >= COMPILE_MIN_TK the backend runs the torch.compile'd graph: forward and grads agree (fp64)."""
    tk = compiled_manual.COMPILE_MIN_TK + 3
    q, k, v = _qkv(1, 2, tk - 5, tk, 8)
    got = _out_and_grads(compiled_manual.compiled_manual_attention, q, k, v)
    want = _out_and_grads(attention_formula, q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert (a - b).abs().max() <= FP64_NOISE, name


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_flex_forward_on_cpu(compiled):
    """flex's mask_mod is bottom-right aligned (Tq < Tk); on CPU only the no-grad forward exists (fp32)."""
    q, k, v = (t.detach().float() for t in _qkv(1, 2, 9, 70, 16))
    with torch.no_grad():
        got = flex.flex_attention_fn(q, k, v, compiled=compiled)
    want = attention_formula(q.double(), k.double(), v.double())
    assert (got.double() - want).abs().max() < 1e-5  # fp32 rounding of 70-term sums of O(1) values
    with pytest.raises(AttentionInputError, match="dropout"):
        get_backend("flex")(q, k, v, dropout_p=0.1)  # the registry refuses before the kernel runs
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex.flex_attention_fn(q.requires_grad_(), k, v)
    assert "no backward" in get_backend("flex").why_unsupported("cpu", torch.float32)


# ----------------------------------------------------------------------------------------------- sdpa


@pytest.mark.parametrize("name", ["sdpa", "sdpa_math", "sdpa_flash"])
@pytest.mark.parametrize("tq", [1, 5])
def test_sdpa_short_queries_compute_only_their_rows(monkeypatch, name, tq):
    # A decode step or prefill chunk hands SDPA its Tq query rows, not Tk (the padded square once cost a decode
    # step at Tk = 4096 130x manual's time); the output is the bottom-right causal formula all the same.
    rows_computed = []
    sdpa_call = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, *args, **kwargs):
        rows_computed.append(q.size(-2))
        return sdpa_call(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    q, k, v = _qkv(2, 3, tq, 29, 8, dtype=torch.float32)
    out = get_backend(name).fn(q, k, v, causal=True)
    assert rows_computed == [tq]
    torch.testing.assert_close(out, attention_formula(q, k, v, causal=True))  # fp32's default tolerance


def test_sdpa_pads_for_a_kernel_that_takes_no_mask(monkeypatch):
    # CUDA's flash kernel takes no attn_mask: there the short block is padded to the square (Tk rows), run with
    # the square causal rule and cut back; checked on CPU by making the kernel refuse masks.
    from attnbench import sdpa

    monkeypatch.setattr(sdpa, "_takes_mask", lambda kernel, device: False)
    q, k, v = _qkv(2, 3, 5, 29, 8, dtype=torch.float32)
    torch.testing.assert_close(sdpa.sdpa_attention(q, k, v, causal=True), attention_formula(q, k, v, causal=True))


# --------------------------------------------------------------------------------------------- triton


def test_triton_flash_reason_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert get_backend("triton_flash").why_unsupported("cpu", torch.float32) is not None


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("prop", ["equivalence", "causal_grad_zero", "single_token"])
def test_triton_flash_interpreted(triton_interpreter, prop, dtype):
    """A few hypothesis examples of the suite's properties, toy shapes (the interpreter is numpy-slow; its
    16-key blocks make T <= 24 cross a tile boundary)."""
    backend = triton_interpreter
    assert backend.supports("cpu", dtype)
    with toy_sizes_only():
        run_property(PROPERTIES[prop], backend, "cpu", [dtype], max_examples=4, derandomize=True)


@needs_triton
@pytest.mark.parametrize(("tq", "tk", "d"), [(1, 1, 3), (16, 16, 16), (17, 40, 7), (3, 33, 20)])
def test_triton_flash_tails_match_formula(triton_interpreter, tq, tk, d):
    """T and D not multiples of the block sizes (masked loads/stores), Tq < Tk: fp32 against float64."""
    q, k, v = (t.detach().float().requires_grad_() for t in _qkv(1, 2, tq, tk, d))
    got = _out_and_grads(triton_interpreter, q, k, v)
    want = _out_and_grads(attention_formula, *(t.detach().double().requires_grad_() for t in (q, k, v)))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert (a.double() - b).abs().max() < 1e-5, name  # fp32 rounding of <= 40-term sums of O(1) values
