"""`chunked`: the flash-attention algorithm in plain PyTorch, O(T) memory in forward and backward.

Forward (online softmax). For one query row with scores s_j = scale * q.k_j, softmax attention is
    out = sum_j exp(s_j - m) v_j / sum_j exp(s_j - m)        for any constant m (we want m = max_j s_j).
We visit the keys in blocks and keep, per query row, the running max m, the running denominator
l = sum exp(s_j - m) and the running numerator acc = sum exp(s_j - m) v_j over the keys seen so far.
A new block with scores s_blk gives m' = max(m, max s_blk); the old sums were taken relative to m, so
they are rescaled by alpha = exp(m - m') before the block's terms are added:
    l' = alpha * l + sum_blk exp(s_blk - m'),    acc' = alpha * acc + exp(s_blk - m') @ v_blk.
At the end out = acc / l, and the log-sum-exp lse = m + log(l) is saved: it is all the backward needs.
Only a (Tq, block) slab of scores exists at a time, never the (Tq, Tk) matrix.

Backward (recompute). With P = softmax(S), O = P V and upstream dO:
    dV = P^T dO,    dP = dO V^T,    dS = P * (dP - Dlt),  Dlt_i = sum_j P_ij dP_ij = rowsum(dO * O)_i,
    dQ = scale * dS K,    dK = scale * dS^T Q.
Each key block recomputes its slab P = exp(scale * Q K_blk^T - lse) from the saved lse (exact, no second
max pass), so the backward also holds one (Tq, block) slab at a time.

Vectorization: the Python loop runs over key blocks only; each step handles every query row at once.
With causal masking, key block [j0, j1) is seen only by queries at absolute positions >= j0, so each
step slices away the query rows above the block (fully masked blocks are skipped) and masks only the
rows that cross the diagonal. Each sliced row sees key j0, so its running max is always finite.

Dropout (on the normalized probabilities, as in the other backends): each key block draws its keep-mask
from a generator seeded with (seed, block index); the seed comes from the global RNG in the forward and is
saved, so the backward regenerates exactly the same masks. The denominator l uses the undropped terms.

Low-precision inputs (fp16/bf16) are computed in fp32 and the output is cast back.
"""

from __future__ import annotations

import torch

from .registry import NAN_IN_FUTURE_VALUE, AttentionInputError, default_scale, register_backend

DEFAULT_BLOCK = 128  # keys per step: larger means fewer Python steps, more memory (Tq * block scores)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


def _key_blocks(tq: int, tk: int, block: int, causal: bool):
    """Yield (j0, j1, r0, n_diag): key block [j0, j1), first query row r0 that sees it, and how many of the
    rows from r0 on cross the diagonal (need a mask)."""
    off = tk - tq  # query i sits at absolute position off + i
    for j0 in range(0, tk, block):
        j1 = min(j0 + block, tk)
        if not causal:
            yield j0, j1, 0, 0
            continue
        r0 = max(0, j0 - off)  # row off + r0 >= j0 sees key j0; earlier rows see nothing of this block
        n_diag = min(tq - r0, max(0, j1 - 1 - (off + r0)))  # rows with position < j1 - 1 see part of it
        yield j0, j1, r0, n_diag


def _diag_mask(r0: int, n_diag: int, j0: int, j1: int, off: int, device) -> torch.Tensor:
    """(n_diag, j1 - j0) bool, True where the key is in the future of the query (to be masked)."""
    pos = torch.arange(off + r0, off + r0 + n_diag, device=device)[:, None]  # (n_diag, 1) query positions
    keys = torch.arange(j0, j1, device=device)[None, :]  # (1, bk)
    return keys > pos


def _dropout_keep(shape, p: float, seed: int, j: int, device) -> torch.Tensor:
    """Scaled keep-mask for key block j: 1/(1-p) where kept, 0 where dropped; reproducible from (seed, j)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + j)
    keep = torch.rand(shape, generator=g, device=device) >= p
    return keep.to(torch.float32) / (1.0 - p)


def online_softmax_forward(qs, k3, v3, causal: bool, block: int, dropout_p: float = 0.0, seed: int = 0):
    """The forward loop on (BH, T, D) tensors, qs already scaled. Returns out (BH, Tq, D), the running max m and the
    denominator den (BH, Tq); the log-sum-exp of each row's scores is m + log(den)."""
    bh, tq, d = qs.shape
    tk = k3.size(1)
    m = torch.full((bh, tq), float("-inf"), dtype=qs.dtype, device=qs.device)  # (BH, Tq) running max
    den = torch.zeros((bh, tq), dtype=qs.dtype, device=qs.device)  # (BH, Tq) running denominator
    acc = torch.zeros((bh, tq, d), dtype=qs.dtype, device=qs.device)  # (BH, Tq, D) running numerator
    for j, (j0, j1, r0, n_diag) in enumerate(_key_blocks(tq, tk, block, causal)):
        s = qs[:, r0:] @ k3[:, j0:j1].transpose(1, 2)  # (BH, Tq - r0, bk) scores
        if n_diag:
            s[:, :n_diag].masked_fill_(_diag_mask(r0, n_diag, j0, j1, tk - tq, qs.device), float("-inf"))
        m_old = m[:, r0:]  # (BH, Tq - r0) view
        m_new = torch.maximum(m_old, s.amax(dim=-1))  # (BH, Tq - r0), finite: every row sees key j0
        alpha = torch.exp(m_old - m_new)  # (BH, Tq - r0) rescales what was summed relative to m_old
        p = s.sub_(m_new[..., None]).exp_()  # (BH, Tq - r0, bk) unnormalized probabilities, in place
        den[:, r0:] = den[:, r0:] * alpha + p.sum(dim=-1)
        if dropout_p > 0:
            p = p * _dropout_keep(p.shape, dropout_p, seed, j, qs.device).to(p.dtype)
        acc[:, r0:] = torch.baddbmm(acc[:, r0:] * alpha[..., None], p, v3[:, j0:j1])  # (BH, Tq - r0, D)
        m[:, r0:] = m_new
    return acc / den[..., None], m, den


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, dropout_p: float, block: int):
        in_dtype, cdt = q.dtype, _compute_dtype(q.dtype)
        b, h, tq, d = q.shape
        tk = k.size(-2)
        q3 = q.reshape(b * h, tq, d).to(cdt)  # (BH, Tq, D)
        k3 = k.reshape(b * h, tk, d).to(cdt)  # (BH, Tk, D)
        v3 = v.reshape(b * h, tk, d).to(cdt)  # (BH, Tk, D)
        seed = int(torch.randint(0, 2**31 - 1, ())) if dropout_p > 0 else 0
        out, m, den = online_softmax_forward(q3 * scale, k3, v3, causal, block, dropout_p, seed)  # scale folded in q
        ctx.save_for_backward(q3, k3, v3, out, m + torch.log(den))  # lse: (BH, Tq)
        ctx.causal, ctx.scale, ctx.dropout_p, ctx.block, ctx.seed = causal, scale, dropout_p, block, seed
        ctx.in_dtype = in_dtype
        return out.reshape(b, h, tq, d).to(in_dtype)

    @staticmethod
    def backward(ctx, dout):
        q3, k3, v3, out, lse = ctx.saved_tensors
        scale, p_drop = ctx.scale, ctx.dropout_p
        bh, tq, d = q3.shape
        tk = k3.size(1)
        do = dout.reshape(bh, tq, d).to(q3.dtype)  # (BH, Tq, D)
        delta = (do * out).sum(dim=-1)  # (BH, Tq) Dlt_i = sum_j P_ij dP_ij
        qs = q3 * scale  # (BH, Tq, D)
        dq = torch.zeros_like(q3)  # (BH, Tq, D)
        dk = torch.empty_like(k3)  # (BH, Tk, D)
        dv = torch.empty_like(v3)  # (BH, Tk, D)
        for j, (j0, j1, r0, n_diag) in enumerate(_key_blocks(tq, tk, ctx.block, ctx.causal)):
            kb, vb = k3[:, j0:j1], v3[:, j0:j1]  # (BH, bk, D)
            s = qs[:, r0:] @ kb.transpose(1, 2)  # (BH, Tq - r0, bk)
            if n_diag:
                s[:, :n_diag].masked_fill_(_diag_mask(r0, n_diag, j0, j1, tk - tq, q3.device), float("-inf"))
            p = s.sub_(lse[:, r0:, None]).exp_()  # (BH, Tq - r0, bk) normalized probabilities, in place
            dp = do[:, r0:] @ vb.transpose(1, 2)  # (BH, Tq - r0, bk) gradient w.r.t. the dropped P
            if p_drop > 0:
                keep = _dropout_keep(p.shape, p_drop, ctx.seed, j, q3.device).to(p.dtype)
                dv[:, j0:j1] = (p * keep).transpose(1, 2) @ do[:, r0:]  # (BH, bk, D)
                dp = dp * keep
            else:
                dv[:, j0:j1] = p.transpose(1, 2) @ do[:, r0:]  # (BH, bk, D)
            ds = dp.sub_(delta[:, r0:, None]).mul_(p)  # (BH, Tq - r0, bk) gradient w.r.t. scaled scores
            dq[:, r0:] += ds @ kb  # (BH, Tq - r0, D); the scale is applied once below
            dk[:, j0:j1] = ds.transpose(1, 2) @ qs[:, r0:]  # (BH, bk, D) = scale * dS^T Q
        shape_q, shape_k = (*dout.shape[:2], tq, d), (*dout.shape[:2], tk, d)
        dq = (dq * scale).reshape(shape_q).to(ctx.in_dtype)
        dk, dv = dk.reshape(shape_k).to(ctx.in_dtype), dv.reshape(shape_k).to(ctx.in_dtype)
        return dq, dk, dv, None, None, None, None


def chunked_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None, block: int = DEFAULT_BLOCK):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D) -> (B, H, Tq, D)
    if not (isinstance(block, int) and block > 0):
        raise AttentionInputError(f"block must be a positive int, got {block!r}")
    return _ChunkedAttention.apply(q, k, v, causal, default_scale(q, scale), dropout_p, block)


register_backend(
    "chunked",
    chunked_attention,
    "flash-attention algorithm in plain PyTorch: online softmax over key blocks, recomputing backward, O(T) memory",
    nan_deviation=NAN_IN_FUTURE_VALUE + " (within its key block)",
)
