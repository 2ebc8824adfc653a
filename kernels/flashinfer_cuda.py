"""`flashinfer`: FlashInfer's serving kernels (forward only), on CUDA: its paged-KV wrappers and ragged prefill.

The mapping from the contract, written once here (install the `flashinfer-python` package on a CUDA machine):

- Dense call: `flashinfer.single_prefill_with_kv_cache` per batch item, on the (T, H, D) "NHD" layout. FlashInfer's
  causal mask for a query shorter than its keys (append attention) is aligned to the bottom right: the contract's.
- Paged cache (attnbench.layouts): FlashInfer keeps the page table as CSR, not as a block table. `page_table_csr`
  turns the contract's (block_table, cache_seqlens) into (indptr, indices, last_page_len): sequence b's pages are
  indices[indptr[b]:indptr[b + 1]] = block_table[b, :ceil(L / page_size)], its last page holding
  last_page_len[b] = L - (pages - 1) * page_size rows (1 .. page_size); the block-table tail is never passed.
  Decode (Tq = 1) runs `BatchDecodeWithPagedKVCacheWrapper`, chunked prefill (Tq > 1)
  `BatchPrefillWithPagedKVCacheWrapper` with qo_indptr = b * Tq, both planned per call (plan, then run) on
  (num_pages, page_size, Hkv, D) "NHD" pages, the contract's cache layout.
- Ragged batch: `BatchPrefillWithRaggedKVCacheWrapper`, planned with the contract's cu_seqlens as qo_indptr and
  kv_indptr.
- Features: GQA (num_qo_heads a multiple of num_kv_heads, the contract's grouping); window as window_left = window
  - 1 (the keys before the query it still sees); softcap as logits_soft_cap. Not declared: FlashInfer's ALiBi
  computes its own slopes (pos_encoding_mode="ALIBI"), not the caller's; custom masks are bit-packed tensors, not
  a mask_mod; no sinks, value_dim or returned lse through these wrappers here.
- Scale: sm_scale, the contract's 1/sqrt(D) by default. dtypes: fp16 and bf16. No dropout, no backward.
- flashinfer is imported on the first call; registration only checks that the package is installed. Nothing here
  has run on a GPU in this repository's CI (no GPU there): the CSR conversion is tested on CPU
  (tests/test_flashinfer_layout.py); the kernels answer `attnbench check flashinfer` on a CUDA machine.
"""

from __future__ import annotations

import functools

import torch

from .dense import default_scale
from .foreign import missing_package_reason
from .registry import register_backend

DTYPES = (torch.float16, torch.bfloat16)
WORKSPACE_BYTES = 128 << 20  # FlashInfer's examples allocate 128 MB of float workspace per device
INSTALL = "pip install flashinfer-python, on a CUDA machine"


def page_table_csr(block_table: torch.Tensor, cache_seqlens: torch.Tensor, page_size: int) -> tuple[torch.Tensor, ...]:
    """The contract's block table as FlashInfer's CSR page table: (indptr (B + 1,), indices (total pages,),
    last_page_len (B,)), int32, on block_table's device. block_table: (B, max_pages); cache_seqlens: (B,) >= 1."""
    pages = (cache_seqlens.long() + page_size - 1) // page_size  # (B,) pages each sequence uses
    used = torch.arange(block_table.size(1), device=block_table.device) < pages[:, None]  # (B, max_pages)
    indptr = torch.cat([pages.new_zeros(1), pages.cumsum(0)])  # (B + 1,)
    last = cache_seqlens.long() - (pages - 1) * page_size  # (B,) rows of the last page: 1 .. page_size
    return indptr.int(), block_table[used].int(), last.int()  # block_table[used]: row-major, each row's pages in order


@functools.cache
def _workspace(device: torch.device) -> torch.Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)


def _options(q: torch.Tensor, scale, window, softcap) -> dict:
    return dict(
        sm_scale=default_scale(q, scale), window_left=-1 if window is None else window - 1, logits_soft_cap=softcap
    )


def flashinfer_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, softcap=None):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D)
    import flashinfer

    if dropout_p > 0:
        raise NotImplementedError("FlashInfer's prefill has no dropout")
    options = _options(q, scale, window, softcap)
    outs = [
        flashinfer.single_prefill_with_kv_cache(*(t[b].transpose(0, 1).contiguous() for t in (q, k, v)), causal=causal,
                                                kv_layout="NHD", **options)  # (Tq, Hq, D)
        for b in range(q.size(0))
    ]  # fmt: skip
    return torch.stack(outs).transpose(1, 2)  # (B, Tq, Hq, D) -> (B, Hq, Tq, D)


def flashinfer_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=True, scale=None):
    # q: (total_q, Hq, D); k, v: (total_k, Hkv, D) -> (total_q, Hq, D)
    import flashinfer

    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace(q.device), "NHD")
    wrapper.plan(cu_seqlens_q, cu_seqlens_k, q.size(1), k.size(1), q.size(-1), causal=causal,
                 q_data_type=q.dtype, **_options(q, scale, None, None))  # fmt: skip
    out = wrapper.run(*(t.contiguous() for t in (q, k, v)))  # rows past cu_seqlens_q[-1]: padding, left as they are
    return torch.cat([out[: int(cu_seqlens_q[-1])], q.new_zeros(q.size(0) - int(cu_seqlens_q[-1]), *q.shape[1:])])


def flashinfer_paged(q, k_cache, v_cache, block_table, cache_seqlens, *, causal=True, scale=None):
    # q: (B, Tq, Hq, D); k_cache, v_cache: (num_pages, page_size, Hkv, D) -> (B, Tq, Hq, D)
    import flashinfer

    (b, tq, hq, d), hkv, page_size = q.shape, k_cache.size(2), k_cache.size(1)
    indptr, indices, last = page_table_csr(block_table, cache_seqlens, page_size)
    options, cache = _options(q, scale, None, None), (k_cache, v_cache)
    if tq == 1:  # decode: causal or not, the one query is the sequence's last position and sees every key
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(q.device), "NHD")
        wrapper.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=q.dtype, **options)
        return wrapper.run(q[:, 0].contiguous(), cache)[:, None]  # (B, Hq, D) -> (B, 1, Hq, D)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(q.device), "NHD")
    qo_indptr = torch.arange(0, (b + 1) * tq, tq, dtype=torch.int32, device=q.device)  # (B + 1,)
    wrapper.plan(qo_indptr, indptr, indices, last, hq, hkv, d, page_size, causal=causal, q_data_type=q.dtype, **options)
    return wrapper.run(q.reshape(b * tq, hq, d), cache).view(b, tq, hq, d)


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := missing_package_reason("flashinfer", INSTALL):
        return reason
    if device.type != "cuda":
        return f"FlashInfer's kernels run on CUDA only, not {device.type}"
    return None if dtype in DTYPES else f"FlashInfer's wrappers here take fp16/bf16, not {dtype}"


register_backend(
    "flashinfer",
    flashinfer_attention,
    "FlashInfer: single prefill, ragged prefill and its paged-KV decode/prefill wrappers (CUDA, forward only)",
    _reason,
    no_dropout_reason=lambda device: "FlashInfer's attention has no dropout",
    no_backward_reason="FlashInfer's attention kernels are inference kernels: they have no backward",
    features=("gqa", "window", "softcap"),
    varlen=flashinfer_varlen,
    paged=flashinfer_paged,
)
