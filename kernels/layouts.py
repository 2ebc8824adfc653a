"""Serving layouts: ragged batches of packed tokens (varlen) and a paged KV cache, on top of the dense contract.

Ragged batch (flash-attn's `flash_attn_varlen_func` convention):

    out = attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True, scale=None)
    q: (total_q, Hq, D); k, v: (total_k, Hkv, D); cu_seqlens_q/k: int32 (B + 1,), 0 first, non-decreasing;
    out: (total_q, Hq, D)

Sequence b owns query rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1 and key rows cu_seqlens_k[b] ..
cu_seqlens_k[b + 1] - 1, and attends to its own keys only. A sequence may be empty (its length 0); it needs
Lq <= Lk like the dense contract. Causal is aligned to the bottom right per sequence: query i of a sequence sits
at position Lk - Lq + i. Rows past cu_seqlens[-1] are padding: never read (the default writes 0 there; a
backend's own kernel may leave them unwritten, as flash-attn does).
max_seqlen_q/k bound the lengths (kernels size their grid with them).

Paged KV cache (flash-attn's `flash_attn_with_kvcache(..., block_table=...)`, FlashInfer's page table):

    out = attend_paged(q, k_cache, v_cache, block_table, cache_seqlens, causal=True, scale=None)
    q: (B, Tq, Hq, D); k_cache, v_cache: (num_pages, page_size, Hkv, D); block_table: int32 (B, max_pages);
    cache_seqlens: int32 (B,); out: (B, Tq, Hq, D)

Sequence b's keys are its first L = cache_seqlens[b] cache positions; position j lives in page
block_table[b, j // page_size], row j % page_size. Pages may be shared between sequences (a common prefix).
Block-table entries past the sequence's ceil(L / page_size) pages, cache rows past L and pages no sequence names
are never read. The Tq queries are the sequence's last Tq positions (decode: Tq = 1; chunked prefill: Tq > 1,
causal bottom right), so Tq <= L.

A backend runs its own implementation where it declares one (Backend.varlen, Backend.paged: the same
arguments, already checked); otherwise the exact defaults below run each sequence through its dense call.
"""

from __future__ import annotations

import math

import torch

from .contract import Backend
from .errors import AttentionInputError, BackendOutputError
from .registry import get_backend


def _check_int32_vector(name: str, t, length: int | None, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise AttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32 or t.dim() != 1:
        raise AttentionInputError(f"{name} must be a 1-D int32 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if length is not None and t.numel() != length:
        raise AttentionInputError(f"{name} must have {length} entries, got {t.numel()}")
    if t.device != device:
        raise AttentionInputError(f"{name} is on {t.device}, q on {device}")


def _check_packed(q, k, v, layout: str) -> None:
    """q: (rows, Hq, D) and k, v: (rows, Hkv, D) (or the cache's (pages, page_size, Hkv, D)): heads, dtypes."""
    for name, t, rank in (("q", q, 3 if layout == "varlen" else 4), ("k", k, None), ("v", v, None)):
        if not isinstance(t, torch.Tensor):
            raise AttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if rank is not None and t.dim() != rank:
            raise AttentionInputError(f"{name} must have {rank} dimensions for {layout}, got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise AttentionInputError(f"k and v shapes differ: k {tuple(k.shape)} vs v {tuple(v.shape)}")
    hq, hk = q.size(-2), k.size(-2)
    if q.size(-1) != k.size(-1) or q.size(-1) == 0:
        raise AttentionInputError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} need the same non-zero head size")
    if hq == 0 or hk == 0 or hq % hk:
        raise AttentionInputError(f"the query heads Hq={hq} must be a multiple of the key/value heads Hkv={hk}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise AttentionInputError(f"q, k, v need one floating-point dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise AttentionInputError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")


def _check_flags(causal, scale) -> None:
    """causal and scale as the dense contract takes them (a backend's own layout path never sees the dense check)."""
    if not isinstance(causal, bool):  # a string such as 'no' is truthy: it would silently mean causal
        raise AttentionInputError(f"causal must be True or False, got {causal!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise AttentionInputError(f"scale must be a positive finite number or None, got {scale!r}")


def check_varlen_inputs(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True, scale=None
) -> None:
    """Raise AttentionInputError naming the first argument that breaks the varlen layout."""
    _check_flags(causal, scale)
    _check_packed(q, k, v, "varlen")
    if k.dim() != 3:
        raise AttentionInputError(f"k must have 3 dimensions for varlen, got {tuple(k.shape)}")
    _check_int32_vector("cu_seqlens_q", cu_seqlens_q, None, q.device)
    _check_int32_vector("cu_seqlens_k", cu_seqlens_k, cu_seqlens_q.numel(), q.device)
    if cu_seqlens_q.numel() < 2:
        raise AttentionInputError(f"cu_seqlens_q needs B + 1 >= 2 entries, got {cu_seqlens_q.numel()}")
    for name, cu, rows in (("cu_seqlens_q", cu_seqlens_q, q.size(0)), ("cu_seqlens_k", cu_seqlens_k, k.size(0))):
        if cu[0] != 0 or bool((cu[1:] < cu[:-1]).any()) or cu[-1] > rows:
            raise AttentionInputError(f"{name} must start at 0, never decrease and end <= {rows} rows: {cu.tolist()}")
    lq, lk = cu_seqlens_q.diff(), cu_seqlens_k.diff()  # (B,) each
    if bool((lq > lk).any()):
        b = int((lq > lk).nonzero()[0])
        raise AttentionInputError(f"cu_seqlens_q: sequence {b} has {int(lq[b])} queries > {int(lk[b])} keys")
    for name, bound, lengths in (("max_seqlen_q", max_seqlen_q, lq), ("max_seqlen_k", max_seqlen_k, lk)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < int(lengths.max()):
            raise AttentionInputError(
                f"{name} must be an int >= the longest sequence {int(lengths.max())}, got {bound!r}"
            )


def check_paged_inputs(q, k_cache, v_cache, block_table, cache_seqlens, causal=True, scale=None) -> None:
    """Raise AttentionInputError naming the first argument that breaks the paged-cache layout."""
    _check_flags(causal, scale)
    _check_packed(q, k_cache, v_cache, "paged")
    if k_cache.dim() != 4 or k_cache.size(1) == 0:
        raise AttentionInputError(f"k_cache must be (num_pages, page_size >= 1, Hkv, D), got {tuple(k_cache.shape)}")
    B, Tq, page_size = q.size(0), q.size(1), k_cache.size(1)
    if B == 0 or Tq == 0:
        raise AttentionInputError(f"q must be (B >= 1, Tq >= 1, Hq, D), got {tuple(q.shape)}")
    if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2:
        raise AttentionInputError(f"block_table must be a (B, max_pages) int32 tensor, got {block_table!r:.80}")
    if block_table.size(0) != B or block_table.device != q.device:
        raise AttentionInputError(f"block_table must be ({B}, max_pages) on {q.device}, got {tuple(block_table.shape)}")
    _check_int32_vector("cache_seqlens", cache_seqlens, B, q.device)
    if bool((cache_seqlens < Tq).any()) or bool((cache_seqlens > block_table.size(1) * page_size).any()):
        raise AttentionInputError(
            f"cache_seqlens must lie in [Tq, max_pages * page_size] = [{Tq}, {block_table.size(1) * page_size}], "
            f"got {cache_seqlens.tolist()}"
        )
    used = torch.arange(block_table.size(1), device=q.device) < (cache_seqlens[:, None] + page_size - 1) // page_size
    pages = block_table[used]  # the entries the sequences' keys live in; the tail is never read
    if bool(((pages < 0) | (pages >= k_cache.size(0))).any()):
        raise AttentionInputError(f"block_table names pages outside 0 .. {k_cache.size(0) - 1}: {pages.tolist()}")


def varlen_by_sequence(backend: Backend, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
    """The exact default: each non-empty sequence through `backend`'s dense call, in packing order (an empty one
    adds no row), then zeros for the padding rows. q: (total_q, Hq, D); k, v: (total_k, Hkv, D) -> (total_q, Hq, D)."""
    pieces = []
    bounds_q, bounds_k = cu_seqlens_q.unfold(0, 2, 1).tolist(), cu_seqlens_k.unfold(0, 2, 1).tolist()  # (B, 2) each
    for (q0, q1), (k0, k1) in zip(bounds_q, bounds_k, strict=True):
        if q1 > q0:
            dense = [t[a:b].transpose(0, 1)[None] for t, a, b in ((q, q0, q1), (k, k0, k1), (v, k0, k1))]
            pieces.append(backend(*dense, **kw)[0].transpose(0, 1))  # (Lq, Hq, D)
    pieces.append(q.new_zeros(q.size(0) - bounds_q[-1][1], *q.shape[1:]))  # (padding rows, Hq, D)
    return torch.cat(pieces)


def varlen_as_documents(dense, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
    """A varlen implementation for a dense call that runs document_ids and skips what they mask (chunked): a batch
    whose sequences each have Lq = Lk (prefill, one cu_seqlens) is one call over the packed tokens, the documents
    keeping sequences apart; causal within a document is then each sequence's own (query i sees its keys 0..i).
    Any other batch goes through varlen_by_sequence."""
    n = int(cu_seqlens_q[-1])
    if n == 0 or not torch.equal(cu_seqlens_q, cu_seqlens_k):
        return varlen_by_sequence(dense, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)
    docs = torch.repeat_interleave(torch.arange(cu_seqlens_q.numel() - 1, device=q.device), cu_seqlens_q.diff())
    packed = [t[:n].transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, n, D): padding rows left out
    out = dense(*packed, document_ids=docs[None], **kw)[0].transpose(0, 1)  # (n, Hq, D)
    return torch.cat([out, q.new_zeros(q.size(0) - n, *q.shape[1:])])  # padding rows: 0


def contiguous_cache(k_cache, block_table_row: torch.Tensor, length: int) -> torch.Tensor:
    """(length, Hkv, D): one sequence's keys (or values) gathered from its pages, in position order."""
    page_size = k_cache.size(1)
    pages = block_table_row[: (length + page_size - 1) // page_size].long()  # (n_pages,)
    return k_cache[pages].flatten(0, 1)[:length]  # (n_pages * page_size, Hkv, D) -> (length, Hkv, D)


def paged_by_gather(backend: Backend, q, k_cache, v_cache, block_table, cache_seqlens, **kw):
    """The exact default: gather each sequence's keys and values into a contiguous (1, Hkv, L, D) cache and run
    its Tq queries through `backend`'s dense call. q: (B, Tq, Hq, D) -> (B, Tq, Hq, D)."""
    outs = []
    for b, length in enumerate(cache_seqlens.tolist()):
        k, v = (contiguous_cache(c, block_table[b], length).transpose(0, 1)[None] for c in (k_cache, v_cache))
        outs.append(backend(q[b].transpose(0, 1)[None], k, v, **kw)[0].transpose(0, 1))  # (Tq, Hq, D)
    return torch.stack(outs)  # (B, Tq, Hq, D)


def attend_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=True, scale=None, backend=None
) -> torch.Tensor:
    """Attention over a ragged batch of packed sequences (module docstring) with `backend` (a name or a Backend;
    default: the one chosen by `use_backend`)."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    check_varlen_inputs(*args, causal=causal, scale=scale)
    return _dispatch(backend, "varlen", varlen_by_sequence, args, causal=causal, scale=scale)


def attend_paged(q, k_cache, v_cache, block_table, cache_seqlens, *, causal=True, scale=None, backend=None):
    """Attention of the last Tq positions of each sequence over its paged KV cache (module docstring)."""
    args = (q, k_cache, v_cache, block_table, cache_seqlens)
    check_paged_inputs(*args, causal=causal, scale=scale)
    return _dispatch(backend, "paged", paged_by_gather, args, causal=causal, scale=scale)


def _dispatch(backend, layout: str, default, args, **kw) -> torch.Tensor:
    """The backend's own implementation of `layout` ("varlen" or "paged") if it declares one, refused and its
    output checked as a dense call would be; else `default` over its dense call."""
    impl = backend if isinstance(backend, Backend) else get_backend(backend)
    native = getattr(impl, layout)
    if native is None:
        return default(impl, *args, **kw)
    q, k = args[:2]  # (rows, H, D): the refusals of the backend's dense call
    features = ["gqa"] if q.size(-2) != k.size(-2) else []
    if why := impl.why_not(q.device, q.dtype, features=features, backward=torch.is_grad_enabled() and q.requires_grad):
        raise AttentionInputError(f"{impl.name} {why}")
    out = native(*args, **kw)
    _check_layout_output(impl.name, out, q)
    return out


def _check_layout_output(name: str, out, q: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor) or out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        got = f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise BackendOutputError(f"backend {name!r} returned {got}; the layout needs q's {tuple(q.shape)} {q.dtype}")
