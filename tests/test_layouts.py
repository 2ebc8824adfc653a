"""attnbench.layouts: the ragged-batch and paged-cache calls check their arguments, name the bad one, and run a
backend's own implementation where it declares one (the properties in conformance/serving.py check the numbers)."""

from __future__ import annotations

import attnbench
import pytest
import torch
from attnbench import AttentionInputError, Backend, BackendOutputError, attend_paged, attend_varlen
from attnbench.layouts import varlen_as_documents
from attnbench.manual import manual_attention


def i32(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int32)


def varlen_args(**over) -> dict:
    """Two sequences (3 queries over 4 keys, 2 over 2) and one padding row."""
    g = torch.Generator().manual_seed(0)
    args = dict(
        q=torch.randn(6, 4, 8, generator=g),
        k=torch.randn(7, 2, 8, generator=g),
        v=torch.randn(7, 2, 8, generator=g),
        cu_seqlens_q=i32(0, 3, 5),
        cu_seqlens_k=i32(0, 4, 6),
        max_seqlen_q=3,
        max_seqlen_k=4,
    )
    return {**args, **over}


def paged_args(**over) -> dict:
    """Two sequences of 5 and 2 tokens in pages of 4, decoding 2 queries each."""
    g = torch.Generator().manual_seed(1)
    args = dict(
        q=torch.randn(2, 2, 4, 8, generator=g),
        k_cache=torch.randn(4, 4, 2, 8, generator=g),
        v_cache=torch.randn(4, 4, 2, 8, generator=g),
        block_table=i32(3, 1, 0, 2, 0, 0).reshape(2, 3),
        cache_seqlens=i32(5, 2),
    )
    return {**args, **over}


def _zeros(q, *args, **kw):
    return torch.zeros_like(q)


# its own layouts, which never reach a dense call's checks: the layout checks alone must catch each bad argument
NATIVE = Backend("native", manual_attention, "zeros in both layouts", features={"gqa"}, varlen=_zeros, paged=_zeros)
VARLEN_BAD = [
    ("q", dict(q=torch.randn(1, 6, 4, 8))),
    ("cu_seqlens_q", dict(cu_seqlens_q=torch.tensor([0.0, 3.0, 5.0]))),
    ("cu_seqlens_q", dict(cu_seqlens_q=i32(1, 3, 5))),  # not starting at 0
    ("cu_seqlens_q", dict(cu_seqlens_q=i32(0, 3, 2))),  # decreasing
    ("cu_seqlens_q", dict(cu_seqlens_q=i32(0, 3, 7))),  # past the rows of q
    ("cu_seqlens_q", dict(cu_seqlens_q=i32(0, 5, 5))),  # 5 queries over 4 keys
    ("cu_seqlens_k", dict(cu_seqlens_k=i32(0, 4))),  # not B + 1 entries
    ("max_seqlen_q", dict(max_seqlen_q=2)),
    ("max_seqlen_k", dict(max_seqlen_k=4.0)),
    ("the query heads", dict(k=torch.randn(7, 3, 8), v=torch.randn(7, 3, 8))),
    ("causal", dict(causal="yes")),
    ("scale", dict(scale=-1.0)),
]
PAGED_BAD = [
    ("k_cache", dict(k_cache=torch.randn(4, 2, 8), v_cache=torch.randn(4, 2, 8))),
    ("block_table", dict(block_table=torch.zeros(2, 3, dtype=torch.int64))),
    ("block_table", dict(block_table=i32(3, 1, 0).reshape(1, 3))),  # one row for two sequences
    ("block_table", dict(block_table=i32(3, 9, 0, 2, 0, 0).reshape(2, 3))),  # page 9 of 4, in use
    ("cache_seqlens", dict(cache_seqlens=i32(5, 1))),  # fewer keys than the 2 queries
    ("cache_seqlens", dict(cache_seqlens=i32(13, 2))),  # more than 3 pages of 4 hold
    ("cache_seqlens", dict(cache_seqlens=torch.tensor([5, 2]))),  # int64
    ("q", dict(q=torch.randn(2, 0, 4, 8))),
]


@pytest.mark.parametrize("name, bad", VARLEN_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARLEN_BAD)])
def test_varlen_names_the_bad_argument(name, bad):
    bad = dict(bad)
    flags = {"causal": bad.pop("causal", True), "scale": bad.pop("scale", None)}
    with pytest.raises(AttentionInputError, match=f"^{name}"):
        attend_varlen(**varlen_args(**bad), **flags, backend=NATIVE)


@pytest.mark.parametrize("name, bad", PAGED_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PAGED_BAD)])
def test_paged_names_the_bad_argument(name, bad):
    with pytest.raises(AttentionInputError, match=f"^{name}"):
        attend_paged(**paged_args(**bad), backend=NATIVE)


def test_block_table_tail_is_never_read():
    """Entries past a sequence's pages may be anything, -1 included (a null block id): they are not checked or read."""
    tail = paged_args()["block_table"].clone()
    tail[0, 2], tail[1, 1:] = -1, 1000
    assert torch.equal(attend_paged(**paged_args(block_table=tail)), attend_paged(**paged_args()))


def test_padding_rows_are_zero_in_the_default():
    out = attend_varlen(**varlen_args(), backend="chunked")  # (6, 4, 8): row 5 is padding
    assert out[:5].abs().sum() > 0 and torch.equal(out[5], torch.zeros(4, 8))


def test_declared_implementations_are_used_and_checked():
    calls = []

    def varlen(q, *args, **kw):
        calls.append(("varlen", kw))
        return torch.zeros_like(q)

    def paged(q, *args, **kw):
        calls.append(("paged", kw))
        return torch.zeros_like(q)

    native = Backend("native", manual_attention, "declares both layouts", features={"gqa"}, varlen=varlen, paged=paged)
    assert attend_varlen(**varlen_args(), backend=native).abs().sum() == 0  # the default would not give zeros
    assert attend_paged(**paged_args(), causal=False, scale=0.5, backend=native).abs().sum() == 0
    assert calls == [("varlen", {"causal": True, "scale": None}), ("paged", {"causal": False, "scale": 0.5})]
    wrong = Backend("wrong", manual_attention, "returns the wrong shape", varlen=lambda q, *a, **kw: q[:1])
    with pytest.raises(BackendOutputError, match="wrong"):
        attend_varlen(**varlen_args(k=torch.randn(7, 4, 8), v=torch.randn(7, 4, 8)), backend=wrong)


def test_declared_implementation_gets_the_backends_refusals():
    """A backend without GQA is refused GQA in its own varlen path as in its dense call."""
    mha_only = Backend("mha_only", manual_attention, "no gqa", varlen=lambda q, *a, **kw: torch.zeros_like(q))
    with pytest.raises(AttentionInputError, match="gqa"):
        attend_varlen(**varlen_args(), backend=mha_only)


def test_use_backend_picks_the_layout_backend():
    with attnbench.use_backend("manual"):
        by_context = attend_varlen(**varlen_args())
    assert torch.equal(by_context, attend_varlen(**varlen_args(), backend="manual"))


def test_documents_path_packs_a_prefill_batch_into_one_dense_call():
    calls = []

    def dense(q, k, v, **kw):
        calls.append(q.size(-2))
        return manual_attention(q, k, v, **kw)

    prefill = varlen_args(k=torch.randn(6, 2, 8), v=torch.randn(6, 2, 8), cu_seqlens_k=i32(0, 3, 5))
    varlen_as_documents(dense, *prefill.values())
    assert calls == [5]  # the 5 packed tokens at once, the padding row left out
    calls.clear()
    varlen_as_documents(dense, *varlen_args().values())  # 3 queries over 4 keys: sequence by sequence
    assert calls == [3, 2]
