"""Bugs specific to the online-softmax (flash-attention) algorithm, for the mutation kill test.

Test assets only, never registered. Each mutant is a small key-block loop (autograd through plain ops) with one
bug, except `lse_without_max`, which is the real `chunked` backend saving a wrong log-sum-exp for its backward.
Blocks are small on the suite's short sequences (T <= 24: several blocks and a ragged tail) and a real tile
(64 keys) on kernel-sized ones, where 4-key steps would cost a Python loop of hundreds of steps per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attnbench import Scores, Visibility, chunked
from attnbench.dense import default_scale
from mutants import Mutant

SMALL_BLOCK, TILE = 4, 64  # keys per step: SMALL_BLOCK up to 32 keys, then a kernel's tile


def block_size(tk: int) -> int:
    return SMALL_BLOCK if tk <= 32 else TILE


def _online(q, k, v, *, causal, dropout_p, scale, rescale=True, block_max=False, drop_tail=False, block_mask=False):
    """Online softmax over key blocks with one optional bug. q: (B, H, Tq, D); k, v: (B, H, Tk, D)."""
    tq, tk = q.size(-2), k.size(-2)
    block = block_size(tk)
    s_all = (q @ k.transpose(-2, -1)) * default_scale(q, scale)  # (B, H, Tq, Tk), sliced per block below
    if causal:
        keep = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)  # (Tq, Tk)
        if block_mask:  # a key block is either hidden or wholly visible: no element mask on the diagonal
            keep = _coarsen(keep, block)
        s_all = s_all.masked_fill(~keep, float("-inf"))
    m = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (B, H, Tq)
    den = torch.zeros_like(m)  # (B, H, Tq)
    acc = torch.zeros_like(q)  # (B, H, Tq, D)
    end = tk - tk % block if drop_tail else tk
    for j0 in range(0, end, block):
        s = s_all[..., j0 : j0 + block]  # (B, H, Tq, bk)
        m_blk = s.amax(-1)  # (B, H, Tq)
        m_new = torch.maximum(m, m_blk)
        alpha = torch.exp(m - m_new).nan_to_num(0.0)  # rows with no visible key yet: -inf - -inf
        ref = torch.where(torch.isinf(m_blk), m_new, m_blk) if block_max else m_new  # exps taken relative to
        p = torch.exp(s - ref[..., None]).nan_to_num(0.0)  # (B, H, Tq, bk)
        if not rescale:
            alpha = torch.ones_like(alpha)
        den = den * alpha + p.sum(-1)
        pd = F.dropout(p, p=dropout_p) if dropout_p > 0 else p
        acc = acc * alpha[..., None] + pd @ v[..., j0 : j0 + block, :]
        m = m_new
    return acc / den[..., None]  # (B, H, Tq, D)


def _coarsen(keep: torch.Tensor, block: int) -> torch.Tensor:
    """(Tq, Tk) mask made block-granular: a query sees a whole key block if it sees any key in it."""
    blocks = [keep[:, j0 : j0 + block].any(-1, keepdim=True).expand(-1, keep[:, j0 : j0 + block].size(1))
              for j0 in range(0, keep.size(1), block)]  # fmt: skip
    return torch.cat(blocks, dim=1)


def no_rescale(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _online(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, rescale=False)


def block_max_not_running_max(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _online(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, block_max=True)


def drops_tail_block(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _online(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, drop_tail=True)


def diagonal_block_unmasked(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _online(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, block_mask=True)


class _LseWithoutMax(chunked._ChunkedAttention):
    """The chunked backend, but it saves log(den) instead of m + log(den) for the backward's recompute."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, plan, scale, dropout_p):
        out, lse = chunked._ChunkedAttention.forward(ctx, q, k, v, sinks, plan, scale, dropout_p)  # sets ctx.seed
        cdt, hkv = chunked._compute_dtype(q.dtype), k.size(1)
        q3 = chunked.to_rows(q, hkv).to(cdt)  # (BHkv, Tq * group, D), as the forward lays it out
        k3, v3 = (t.reshape(-1, *t.shape[-2:]).to(cdt) for t in (k, v))  # (BHkv, Tk, D)
        out3, m, den = chunked.online_softmax_forward(q3 * scale, k3, v3, plan, dropout_p, ctx.seed)
        ctx.save_for_backward(q3, k3, v3, out3, torch.log(den), None)  # bug: the running max is left out
        return out, lse


def lse_without_max(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    (b, hq, tq, _), (hkv, tk) = q.shape, k.shape[1:3]
    plan = chunked.Plan(tq, tk, b, hkv, hq // hkv, block_size(tk), Visibility(causal), Scores())
    out, _ = _LseWithoutMax.apply(q, k, v, None, plan, default_scale(q, scale), dropout_p)
    return out


MUTANTS: list[Mutant] = [
    Mutant("online_no_rescale", no_rescale, "online softmax never rescales acc/den when the running max grows"),
    Mutant("online_block_max", block_max_not_running_max, "exps taken against the block max, acc kept at running"),
    Mutant("online_drops_tail", drops_tail_block, "loop stops at the last full block: a ragged key tail is lost"),
    Mutant("online_diag_unmasked", diagonal_block_unmasked, "masks whole key blocks, not within the diagonal"),
    Mutant("online_lse_without_max", lse_without_max, "backward recomputes P from log(den), forgetting the max"),
]
