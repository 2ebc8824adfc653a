"""bench_serving.py's accounting: the bytes a paged decode step moves per token and the pairs a ragged prefill
attends, each against the tensors and masks themselves."""

from __future__ import annotations

import torch
from attnbench import visible_mask
from attnbench.bench.suites.bench_serving import (
    HQ,
    decode_bytes_per_token,
    paged_decode_inputs,
    varlen_visible_pairs,
)
from attnbench.layouts import contiguous_cache


def test_decode_bytes_are_the_tensors_one_sequence_reads_and_writes():
    L = 37  # not a whole number of pages: the last page's unused rows are not counted
    q, k_cache, v_cache, table, lengths = paged_decode_inputs(3, L, "cpu", torch.float32)
    keys, values = (contiguous_cache(c, table[1], L) for c in (k_cache, v_cache))  # (L, Hkv, D) each
    touched = (q[1], keys, values, torch.empty_like(q[1]))  # query in, keys and values read, output out
    want = sum(t.numel() * t.element_size() for t in touched)
    assert decode_bytes_per_token(L, q.size(2), k_cache.size(2), q.size(3), torch.float32) == want


def test_varlen_pairs_are_the_packed_block_diagonal_causal_mask():
    lengths = (5, 0, 1, 12, 7)
    docs = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]  # (1, total)
    total = docs.size(1)
    packed = torch.empty(1, HQ, total, 1)  # only shapes matter to the mask
    vis = visible_mask(packed, packed[:, :1], causal=True, document_ids=docs)  # (1, 1, total, total)
    assert varlen_visible_pairs(lengths, HQ) == HQ * int(vis.sum())
