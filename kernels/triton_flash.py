"""`triton_flash`: causal flash attention, forward and backward, written in Triton (FlashAttention-2 layout).

Forward: one program per (query block, batch*head) walks the key blocks with the online softmax (running max
m, denominator l, accumulator acc in fp32; see kernels/chunked.py for the math), stops at the last key block
its queries can see (bottom-right causal: query i sits at absolute position Tk - Tq + i), and stores out and the
log-sum-exp lse = m + log(l). Backward: delta = rowsum(dO * O) in PyTorch, then one kernel per key block for
dK, dV (walking the query blocks that see it) and one per query block for dQ, both recomputing
P = exp(scale * q k^T - lse). Any T and D work: sizes are padded to powers of two inside the kernels and masked.

Runs on CUDA with Triton installed (fp16/bf16; fp32 with IEEE dots, slower), and on CPU tensors only under
Triton's interpreter (TRITON_INTERPRET=1, set before the first call): numpy-speed, so small shapes only; that
is how CI tests it without a GPU. Install with `pip install -e .[triton]`. No dropout (dropout_p > 0 raises).

Features: GQA (a program of query head h loads key/value head h // group; the dK/dV program of a key/value head
walks the query blocks of every query head of its group) and a sliding window (the key loops start at the first
key in view and the dK/dV loop stops at the last query that sees the block, so the work is O(T * window)).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .dense import default_scale
from .registry import register_backend

BLOCK_M = 64  # queries per program
BLOCK_N = 64  # keys per inner step
INTERPRET_BLOCK = 16  # smaller blocks under the interpreter: it runs every block op in numpy
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
triton = tl = None  # imported by _kernels() on first use: the backend registers without triton installed


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _kernels():
    """Define the Triton kernels on first use (TRITON_INTERPRET is read when a kernel is defined). `tl` must be a
    module global: the interpreter patches the triton.language modules it finds in the kernel's globals."""
    global triton, tl, _max_op, _add_op  # triton resolves names in a kernel through its globals
    import triton
    import triton.language as tl

    # Only builtins and our own jit functions below: triton's jit'd helpers (tl.zeros, tl.max, tl.sum) are
    # interpreted only if TRITON_INTERPRET was set when triton was first imported (torch.compile imports it).
    @triton.jit
    def _max_op(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _add_op(a, b):
        return a + b

    @triton.jit
    def _fwd(Q, K, V, OUT, LSE, Tq, Tk, D, scale, G, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
        pid_m, bh = tl.program_id(0), tl.program_id(1)  # bh: batch * Hq + query head
        kv = bh // G  # batch * Hkv + the key/value head this query head reads
        offs_m = pid_m * BM + tl.arange(0, BM)  # (BM,) query rows
        offs_d = tl.arange(0, BD)  # (BD,)
        row_ok, d_ok = offs_m < Tq, offs_d < D
        q = tl.load(Q + bh * Tq * D + offs_m[:, None] * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :])
        m_i = tl.full((BM,), float("-inf"), tl.float32)
        l_i = tl.full((BM,), 0.0, tl.float32)
        acc = tl.full((BM, BD), 0.0, tl.float32)
        off = Tk - Tq
        end = tl.minimum(Tk, (pid_m + 1) * BM + off) if CAUSAL else Tk  # keys past `end` are all in the future
        start = tl.maximum(0, pid_m * BM + off - window + 1) // BN * BN if WINDOWED else 0  # and before: too old
        for start_n in range(start, end, BN):
            offs_n = start_n + tl.arange(0, BN)  # (BN,)
            kv_mask = (offs_n < Tk)[:, None] & d_ok[None, :]
            k = tl.load(K + kv * Tk * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask)  # (BN, BD)
            v = tl.load(V + kv * Tk * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask)  # (BN, BD)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale  # (BM, BN) fp32
            ok = (offs_n < Tk)[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + off)
            if WINDOWED:
                ok = ok & (offs_n[None, :] > offs_m[:, None] + off - window)
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_op))  # -inf for a row with no key in view yet (window)
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # such a row takes exps relative to 0: no NaN
            alpha = tl.exp(m_i - m_ref)
            p = tl.exp(s - m_ref[:, None])  # (BM, BN)
            l_i = l_i * alpha + tl.reduce(p, 1, _add_op)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new
        out = acc / l_i[:, None]  # every real row sees its own key: l_i > 0
        tl.store(OUT + bh * Tq * D + offs_m[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])  # fmt: skip
        tl.store(LSE + bh * Tq + offs_m, m_i + tl.log(l_i), mask=row_ok)

    @triton.jit
    def _bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, Tq, Tk, D, scale, G, window, CAUSAL: tl.constexpr,
                  WINDOWED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                  PREC: tl.constexpr):  # fmt: skip
        pid_n, bh = tl.program_id(0), tl.program_id(1)  # bh: batch * Hkv + key/value head; G query heads read it
        offs_n = pid_n * BN + tl.arange(0, BN)  # (BN,) keys of this program
        offs_d = tl.arange(0, BD)
        key_ok, d_ok = offs_n < Tk, offs_d < D
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(K + bh * Tk * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask)  # (BN, BD)
        v = tl.load(V + bh * Tk * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask)  # (BN, BD)
        dk = tl.full((BN, BD), 0.0, tl.float32)
        dv = tl.full((BN, BD), 0.0, tl.float32)
        off = Tk - Tq
        start = tl.maximum(0, pid_n * BN - off) // BM * BM if CAUSAL else 0  # earlier queries see none of them
        end = tl.minimum(Tq, (pid_n + 1) * BN - 1 + window - off) if WINDOWED else Tq  # later ones: out of window
        for i in range(0, G * ((end - start + BM - 1) // BM)):  # every query head of the group, every query block
            qh = bh * G + i % G  # batch * Hq + query head
            offs_m = start + (i // G) * BM + tl.arange(0, BM)  # (BM,)
            row_ok = offs_m < Tq
            qd_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + qh * Tq * D + offs_m[:, None] * D + offs_d[None, :], mask=qd_mask)  # (BM, BD)
            do = tl.load(DO + qh * Tq * D + offs_m[:, None] * D + offs_d[None, :], mask=qd_mask)  # (BM, BD)
            lse = tl.load(LSE + qh * Tq + offs_m, mask=row_ok)
            delta = tl.load(DELTA + qh * Tq + offs_m, mask=row_ok)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale  # (BM, BN)
            ok = row_ok[:, None] & key_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + off)
            if WINDOWED:
                ok = ok & (offs_n[None, :] > offs_m[:, None] + off - window)
            p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)  # (BM, BN) probabilities
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # (BM, BN)
            ds = p * (dp - delta[:, None])  # (BM, BN) gradient w.r.t. the scaled scores
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
        tl.store(DK + bh * Tk * D + offs_n[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                 mask=kv_mask)  # fmt: skip
        tl.store(DV + bh * Tk * D + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, Tq, Tk, D, scale, G, window, CAUSAL: tl.constexpr,
                WINDOWED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                PREC: tl.constexpr):  # fmt: skip
        pid_m, bh = tl.program_id(0), tl.program_id(1)  # bh: batch * Hq + query head
        kv = bh // G
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_d = tl.arange(0, BD)
        row_ok, d_ok = offs_m < Tq, offs_d < D
        qd_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + bh * Tq * D + offs_m[:, None] * D + offs_d[None, :], mask=qd_mask)  # (BM, BD)
        do = tl.load(DO + bh * Tq * D + offs_m[:, None] * D + offs_d[None, :], mask=qd_mask)  # (BM, BD)
        lse = tl.load(LSE + bh * Tq + offs_m, mask=row_ok)
        delta = tl.load(DELTA + bh * Tq + offs_m, mask=row_ok)
        dq = tl.full((BM, BD), 0.0, tl.float32)
        off = Tk - Tq
        end = tl.minimum(Tk, (pid_m + 1) * BM + off) if CAUSAL else Tk
        start = tl.maximum(0, pid_m * BM + off - window + 1) // BN * BN if WINDOWED else 0
        for start_n in range(start, end, BN):
            offs_n = start_n + tl.arange(0, BN)
            kv_mask = (offs_n < Tk)[:, None] & d_ok[None, :]
            k = tl.load(K + kv * Tk * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask)  # (BN, BD)
            v = tl.load(V + kv * Tk * D + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask)  # (BN, BD)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale  # (BM, BN)
            ok = row_ok[:, None] & (offs_n < Tk)[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + off)
            if WINDOWED:
                ok = ok & (offs_n[None, :] > offs_m[:, None] + off - window)
            p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        tl.store(DQ + bh * Tq * D + offs_m[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=qd_mask)  # fmt: skip

    return triton, _fwd, _bwd_dkdv, _bwd_dq


def _launch_params(q: torch.Tensor):
    triton = _kernels()[0]
    block = INTERPRET_BLOCK if q.device.type == "cpu" else None
    bm, bn = (block, block) if block else (BLOCK_M, BLOCK_N)
    bd = max(16, triton.next_power_of_2(q.size(-1)))  # tl.dot needs every dimension >= 16
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 exact-ish; the flag is ignored for fp16/bf16
    return bm, bn, bd, prec


class _TritonFlash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, window: int | None):
        triton, fwd, _, _ = _kernels()
        b, hq, tq, d = q.shape
        hkv, tk = k.size(1), k.size(-2)
        q3, k3, v3 = (t.reshape(-1, t.size(-2), d).contiguous() for t in (q, k, v))  # (B * heads, T, D)
        out = torch.empty_like(q3)  # (BHq, Tq, D)
        lse = torch.empty((b * hq, tq), device=q.device, dtype=torch.float32)  # (BHq, Tq)
        bm, bn, bd, prec = _launch_params(q)
        ctx.shape_args = (tq, tk, d, scale, hq // hkv, window or 0, causal, window is not None)
        fwd[(triton.cdiv(tq, bm), b * hq)](q3, k3, v3, out, lse, *ctx.shape_args, bm, bn, bd, prec)
        ctx.save_for_backward(q3, k3, v3, out, lse)
        return out.reshape(b, hq, tq, d)

    @staticmethod
    def backward(ctx, dout):
        triton, _, bwd_dkdv, bwd_dq = _kernels()
        q3, k3, v3, out, lse = ctx.saved_tensors
        bhq, tq, d = q3.shape
        bhkv, tk = k3.shape[:2]
        do = dout.reshape(bhq, tq, d).contiguous()  # (BHq, Tq, D)
        delta = (do.float() * out.float()).sum(-1)  # (BHq, Tq) rowsum(dO * O)
        dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
        bm, bn, bd, prec = _launch_params(q3)
        args = (*ctx.shape_args, bm, bn, bd, prec)
        bwd_dkdv[(triton.cdiv(tk, bn), bhkv)](q3, k3, v3, do, lse, delta, dk, dv, *args)
        bwd_dq[(triton.cdiv(tq, bm), bhq)](q3, k3, v3, do, lse, delta, dq, *args)
        b = dout.size(0)
        shape_k = (b, bhkv // b, tk, d)
        return dq.reshape(dout.shape), dk.reshape(shape_k), dv.reshape(shape_k), None, None, None


def triton_flash_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D)
    return _TritonFlash.apply(q, k, v, causal, default_scale(q, scale), window)


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # looked up once: every call asks _reason


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if not TRITON_INSTALLED:
        return "triton is not installed (pip install -e .[triton])"
    if dtype not in DTYPES:
        return f"triton_flash takes fp16/bf16/fp32, not {dtype}"
    if device.type == "cuda":
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
            return "triton_flash in bf16 needs CUDA sm80+"
        return None
    if device.type == "cpu":
        if not _interpreting():
            return "triton_flash needs CUDA; on CPU only under Triton's interpreter (TRITON_INTERPRET=1, small shapes)"
        if dtype == torch.bfloat16:
            return "Triton's interpreter has no bf16 (it computes on the raw uint16 bits); bf16 needs CUDA"
        return None
    return f"triton_flash needs CUDA, not {device.type}"


register_backend(
    "triton_flash",
    triton_flash_attention,
    "causal flash attention (FA2-style forward and backward) written in Triton; CPU only via TRITON_INTERPRET=1",
    _reason,
    no_dropout_reason=lambda device: "this Triton kernel has no dropout",
    features=frozenset({"gqa", "window"}),
)
