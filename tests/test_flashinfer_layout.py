"""FlashInfer's CSR page table, built from the contract's block table, names the pages each sequence reads, in order
(the part of the `flashinfer` adapter that runs without a GPU; its kernels run on CUDA only)."""

from __future__ import annotations

import pytest
import torch
from attnbench import get_backend
from attnbench.flashinfer_cuda import page_table_csr
from attnbench.layouts import contiguous_cache


def _cache(lengths: list[int], page_size: int, spare: int, seed: int = 0):
    """A shuffled pool of pages, each sequence's block table pointing into it, tails naming spare pages."""
    g = torch.Generator().manual_seed(seed)
    need = [(n + page_size - 1) // page_size for n in lengths]
    total, width = sum(need) + spare, max(need) + 2
    pool = torch.randperm(total, generator=g)  # (total,) physical pages in a random order
    table = torch.empty(len(lengths), width, dtype=torch.int32)
    start = 0
    for b, n in enumerate(need):
        table[b, :n] = pool[start : start + n]
        table[b, n:] = pool[torch.randint(0, total, (width - n,), generator=g)]  # a stale tail: any page
        start += n
    k_cache = torch.randn(total, page_size, 2, 4, generator=g)  # (num_pages, page_size, Hkv, D)
    return k_cache, table, torch.tensor(lengths, dtype=torch.int32)


@pytest.mark.parametrize("page_size", [1, 16, 256])
@pytest.mark.parametrize("lengths", [[1], [16, 17, 1, 300], [255, 256, 257, 513]])
def test_csr_pages_gather_each_sequence(page_size, lengths):
    # Pass: the rows FlashInfer reads through (indptr, indices, last_page_len) are each sequence's contiguous cache,
    # and last_page_len lies in 1 .. page_size.
    k_cache, table, seqlens = _cache(lengths, page_size, spare=3)
    indptr, indices, last = page_table_csr(table, seqlens, page_size)
    assert indptr.dtype == indices.dtype == last.dtype == torch.int32
    assert indptr[0] == 0 and indptr[-1] == indices.numel() and bool((last >= 1).all() & (last <= page_size).all())
    for b, length in enumerate(lengths):
        pages = indices[indptr[b] : indptr[b + 1]].long()
        rows = (pages.numel() - 1) * page_size + int(last[b])
        read = k_cache[pages].flatten(0, 1)[:rows]  # (L, Hkv, D) as FlashInfer walks its pages
        assert torch.equal(read, contiguous_cache(k_cache, table[b], length)), (b, length)


def test_flashinfer_refuses_here_with_its_reason():
    # Pass: on a machine without the package or CUDA, the backend says why instead of failing a call.
    reason = get_backend("flashinfer").why_unsupported("cpu", torch.float16)
    assert "flashinfer" in reason.lower() and ("not installed" in reason or "CUDA" in reason)
