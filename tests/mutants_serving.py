"""Deliberately broken ragged-batch and paged-cache implementations (Backend.varlen / Backend.paged), each over
the correct dense `manual` formula, each a bug seen in real serving kernels. Test assets only, never registered.

- stale_block_table_tail: every block-table entry of a row is gathered and the positions past the sequence are
  masked in the scores; a NaN in a stale tail page still reaches the output through 0 * NaN in weights @ values
  (vllm-project/vllm#42494: FA2's paged path may dereference stale inactive tail entries).
- zero_length_nan: a padded + masked batch unpadded by a 0/1 matmul; an empty sequence's all-masked row is NaN
  and 0 * NaN spreads it to every row (empty sequences in varlen kernels: Dao-AILab/flash-attention PR #2711,
  and #2568 and #1155 before it).
- large_page_off_by_one: with pages over 128 tokens one key past the sequence is read (flashinfer-ai/flashinfer
  #4347, TRTLLM-Gen paged attention wrong with page sizes > 128, and #4450).
- cu_seqlens_off_by_one: each sequence's key range ends one past cu_seqlens_k[b + 1] (an inclusive end), reading
  the first key of the next sequence.
- varlen_top_left: causal aligned to the top left within each sequence (query i sees keys 0..i when Lq < Lk).
- shared_page_grad_overwritten: the backward writes each gathered page's gradient into the cache gradient with
  `index_put_(..., accumulate=False)`, so a page of a prefix shared by several sequences keeps one sequence's
  gradient instead of their sum (duplicate indices without accumulate: the write torch.Tensor.index_put_ leaves
  undefined).
"""

from __future__ import annotations

import torch
from attnbench.dense import default_scale, repeat_kv
from attnbench.layouts import paged_by_gather, varlen_by_sequence
from attnbench.manual import manual_attention
from mutants import Mutant, top_left_causal


def _stale_block_table_tail(q, k_cache, v_cache, block_table, cache_seqlens, *, causal=True, scale=None):
    # q: (B, Tq, Hq, D); every page the row names is gathered, the tail included
    outs = []
    for b, length in enumerate(cache_seqlens.tolist()):
        k, v = (c[block_table[b].long()].flatten(0, 1).transpose(0, 1)[None] for c in (k_cache, v_cache))
        shift = k.size(-2) - length  # the gathered keys run past the sequence's last position

        def live(bi, h, qi, kv, length=length, shift=shift):  # positions past the sequence masked, causal from L
            return (kv < length) & ((kv <= qi - shift) if causal else True)

        out = manual_attention(q[b].transpose(0, 1)[None], k, v, causal=False, scale=scale, mask_mod=live)
        outs.append(out[0].transpose(0, 1))  # (Tq, Hq, D)
    return torch.stack(outs)  # (B, Tq, Hq, D)


def _padded(x, cu_seqlens, n: int, lengths):
    """(total, H, D) -> (B, n, H, D): each sequence's rows, zeros past its length; and the packed row of each
    padded row, -1 past the length."""
    at = cu_seqlens[:-1, None].long() + torch.arange(n)  # (B, n)
    at = torch.where(torch.arange(n) < lengths[:, None], at, -1)
    return torch.cat([x, x.new_zeros(1, *x.shape[1:])])[at], at  # index -1 reads the zero row


def _zero_length_nan(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=True, scale=None):
    # q: (total_q, Hq, D) padded to (B, Hq, max_q, D); k, v: (total_k, Hkv, D) padded to (B, Hq, max_k, D)
    lq, lk = cu_seqlens_q.diff(), cu_seqlens_k.diff()  # (B,)
    mq, mk = max(max_seqlen_q, 1), max(max_seqlen_k, 1)
    (pq, at_q), (pk, _), (pv, _) = (
        _padded(x, cu, n, n_)
        for x, cu, n, n_ in ((q, cu_seqlens_q, mq, lq), (k, cu_seqlens_k, mk, lk), (v, cu_seqlens_k, mk, lk))
    )
    pq, pk, pv = pq.transpose(1, 2), repeat_kv(pk.transpose(1, 2), q.size(1)), repeat_kv(pv.transpose(1, 2), q.size(1))
    scores = (pq @ pk.transpose(-2, -1)) * default_scale(q, scale)  # (B, Hq, max_q, max_k)
    rows, cols = torch.arange(mq)[:, None], torch.arange(mk)[None, :]  # (max_q, 1), (1, max_k)
    vis = cols < lk[:, None, None]  # (B, 1, max_k): the sequence's keys
    if causal:
        vis = vis & (cols <= rows + (lk - lq)[:, None, None])  # (B, max_q, max_k), bottom right per sequence
    att = scores.masked_fill(~vis[:, None], float("-inf")).softmax(-1)  # a sequence without keys: NaN rows
    out = (att @ pv).transpose(1, 2).flatten(0, 1)  # (B * max_q, Hq, D)
    unpad = (torch.arange(q.size(0))[:, None] == at_q.flatten()[None, :]).to(q.dtype)  # (total_q, B * max_q)
    return (unpad @ out.flatten(1)).unflatten(1, q.shape[1:])  # (total_q, Hq, D): 0 * NaN spreads


def _cu_seqlens_off_by_one(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=True, scale=None):
    out = q.new_zeros(q.shape)  # (total_q, Hq, D)
    for b, (q0, q1) in enumerate(cu_seqlens_q.unfold(0, 2, 1).tolist()):
        k0, k1 = int(cu_seqlens_k[b]), min(int(cu_seqlens_k[b + 1]) + 1, k.size(0))  # an inclusive end
        if q1 > q0:
            dense = [t[a:c].transpose(0, 1)[None] for t, a, c in ((q, q0, q1), (k, k0, k1), (v, k0, k1))]
            out[q0:q1] = manual_attention(*dense, causal=causal, scale=scale)[0].transpose(0, 1)
    return out


def _varlen_top_left(q, k, v, *args, **kw):
    return varlen_by_sequence(top_left_causal, q, k, v, *args, **kw)  # the default over a top-left dense call


def _large_page_off_by_one(q, k_cache, v_cache, block_table, cache_seqlens, **kw):
    read = cache_seqlens + int(k_cache.size(1) > 128)  # one key past the sequence with pages over 128 tokens
    return paged_by_gather(manual_attention, q, k_cache, v_cache, block_table, read, **kw)


class _OverwritingGather(torch.autograd.Function):
    """cache[pages]; its backward writes, not adds, each gathered page's gradient (a shared page: one of them)."""

    @staticmethod
    def forward(ctx, cache, pages):
        ctx.save_for_backward(pages)
        ctx.shape = cache.shape
        return cache[pages]  # (pages, page_size, Hkv, D)

    @staticmethod
    def backward(ctx, grad):
        (pages,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_put_((pages,), grad, accumulate=False), None


def _shared_page_grad_overwritten(q, k_cache, v_cache, block_table, cache_seqlens, *, causal=True, scale=None):
    # q: (B, Tq, Hq, D); every sequence's pages gathered in one call, each sequence then through the dense formula
    page_size = k_cache.size(1)
    counts = ((cache_seqlens.long() + page_size - 1) // page_size).tolist()  # pages each sequence reads
    pages = torch.cat([block_table[b, :n] for b, n in enumerate(counts)]).long()  # (total,), shared pages repeated
    k_all, v_all = (_OverwritingGather.apply(c, pages) for c in (k_cache, v_cache))  # (total, page_size, Hkv, D)
    outs, start = [], 0
    for b, (n, length) in enumerate(zip(counts, cache_seqlens.tolist(), strict=True)):
        k, v = (x[start : start + n].flatten(0, 1)[:length].transpose(0, 1)[None] for x in (k_all, v_all))
        start += n
        outs.append(manual_attention(q[b].transpose(0, 1)[None], k, v, causal=causal, scale=scale)[0].transpose(0, 1))
    return torch.stack(outs)  # (B, Tq, Hq, D)


def _dense(q, k, v, **kw):
    """The correct dense formula (`manual`'s), as a function of the mutants' own: a mutant's fn is never a
    registered backend's (test_catalogue_is_never_registered)."""
    return manual_attention(q, k, v, **kw)


def _mutant(name: str, bug: str, features=("gqa",), **layouts) -> Mutant:
    return Mutant(name, _dense, bug, features=frozenset(features), **layouts)


MUTANTS = [
    _mutant(
        "stale_block_table_tail",
        "stale block-table tail pages gathered, masked only in the scores",
        paged=_stale_block_table_tail,
    ),
    _mutant(
        "zero_length_nan",
        "padded varlen: an empty sequence's NaN rows spread through the unpad matmul",
        varlen=_zero_length_nan,
    ),
    _mutant(
        "large_page_off_by_one", "pages over 128 tokens: one key past the sequence read", paged=_large_page_off_by_one
    ),
    _mutant(
        "cu_seqlens_off_by_one", "each sequence's keys end one past cu_seqlens_k[b + 1]", varlen=_cu_seqlens_off_by_one
    ),
    _mutant("varlen_top_left", "causal aligned top-left within each sequence", features=(), varlen=_varlen_top_left),
    _mutant(
        "shared_page_grad_overwritten",
        "a shared page's cache gradient overwritten per sequence, not summed",
        paged=_shared_page_grad_overwritten,
    ),
]
