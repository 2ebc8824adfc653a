"""`flash_attn` and `flash_attn_kvcache`: Tri Dao's flash-attention package (`flash_attn_func`, and
`flash_attn_with_kvcache`, the decoding kernel, forward only), on CUDA.

The mapping from the contract, written once here (install the `flash-attn` package on a CUDA machine):

- Layout: flash-attn takes (B, T, H, D); q, k, v are transposed in torch (a view; the kernel needs a unit last
  stride, which the contract's tensors may lack, so such a tensor is made contiguous first) and the
  (B, Tq, H, D) output is returned as a (B, H, Tq, D) view.
- Causal: flash-attn (2.1 and later) aligns the causal mask to the bottom right when Tq != Tk, the contract's
  convention, so `causal` is passed as it is. For flash_attn_with_kvcache the whole key tensor is the cache
  (no cache_seqlens): query i sits at absolute position Tk - Tq + i.
- Scale: `softmax_scale` (the contract's 1/sqrt(D) by default, flash-attn's default too).
- dtypes: fp16 and bf16 on sm80+ (flash-attn 2); dropout through flash_attn_func only.
- Serving layouts (attnbench.layouts): `flash_attn` runs a ragged batch through `flash_attn_varlen_func`
  (the same packed (total, H, D) tensors and int32 cu_seqlens, causal bottom right per sequence), and
  `flash_attn_kvcache` a paged cache through `flash_attn_with_kvcache(..., cache_seqlens=, block_table=)`, the
  same (num_pages, page_size, Hkv, D) pages. flash-attn 2 takes pages of a multiple of 256 tokens only; other
  page sizes go through the gather default over its dense call.
- Features of flash_attn_func (its docstring in flash_attn/flash_attn_interface.py): GQA (Hq a multiple of Hkv,
  query head h reads h // group, as the contract); window as window_size = (window - 1, 0), its left reach being
  the keys before the query, bottom-right aligned; softcap (0.0 means off); alibi_slopes, (Hq,) or (B, Hq) fp32,
  the bias -slope * |i + Tk - Tq - j|, the contract's. Not declared: one head dim for q, k and v (no value_dim), no
  mask_mod, document_ids, score_mod or sinks; and return_lse is refused: return_attn_probs=True returns
  softmax_lse, but FlashAttnFunc.backward(ctx, dout, *args) drops its gradient, where the contract's lse is
  differentiable.
- flash_attn is imported on the first call; registration only checks that the package is installed.
"""

from __future__ import annotations

import torch

from .dense import default_scale
from .foreign import bthd, missing_package_reason
from .layouts import paged_by_gather
from .registry import get_backend, register_backend

DTYPES = (torch.float16, torch.bfloat16)
FLASH_ATTN_FEATURES = ("gqa", "window", "softcap", "alibi", "return_lse")


def flash_attn_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, softcap=None,
                         alibi_slopes=None):  # fmt: skip
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D)
    from flash_attn import flash_attn_func

    out = flash_attn_func(
        bthd(q),
        bthd(k),
        bthd(v),
        dropout_p=dropout_p,
        softmax_scale=default_scale(q, scale),
        causal=causal,
        window_size=(-1, -1) if window is None else (window - 1, 0),  # keys p - (window - 1) .. p
        softcap=0.0 if softcap is None else softcap,
        alibi_slopes=None if alibi_slopes is None else alibi_slopes.float(),
    )  # (B, Tq, Hq, D)
    return out.transpose(1, 2)


def _no_feature(feature: str, device: torch.device) -> str | None:
    if feature == "return_lse":
        return "flash_attn_func's softmax_lse gets no gradient (FlashAttnFunc.backward drops it); the contract's does"
    return None


def flash_attn_kvcache_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D), the whole cache -> (B, H, Tq, D)
    from flash_attn import flash_attn_with_kvcache

    if dropout_p > 0:
        raise NotImplementedError("flash_attn_with_kvcache has no dropout")
    kv = [t.transpose(1, 2).contiguous() for t in (k, v)]  # the cache must be contiguous (B, Tk, H, D)
    out = flash_attn_with_kvcache(bthd(q), *kv, softmax_scale=default_scale(q, scale), causal=causal)
    return out.transpose(1, 2)  # (B, Tq, H, D) -> (B, H, Tq, D)


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=True, scale=None):
    # q: (total_q, Hq, D); k, v: (total_k, Hkv, D): flash-attn's own packed layout -> (total_q, Hq, D)
    from flash_attn import flash_attn_varlen_func

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        softmax_scale=default_scale(q, scale),
        causal=causal,
    )


PAGE_MULTIPLE = 256  # flash-attn 2's paged kernel: page_block_size must be a multiple of 256


def flash_attn_paged(q, k_cache, v_cache, block_table, cache_seqlens, *, causal=True, scale=None):
    # q: (B, Tq, Hq, D); k_cache, v_cache: (num_pages, page_size, Hkv, D) -> (B, Tq, Hq, D)
    from flash_attn import flash_attn_with_kvcache

    if k_cache.size(1) % PAGE_MULTIPLE:
        kvcache = get_backend("flash_attn_kvcache")
        return paged_by_gather(kvcache, q, k_cache, v_cache, block_table, cache_seqlens, causal=causal, scale=scale)
    return flash_attn_with_kvcache(
        q if q.stride(-1) == 1 else q.contiguous(),
        k_cache,
        v_cache,
        cache_seqlens=cache_seqlens,
        block_table=block_table,
        softmax_scale=default_scale(q, scale),
        causal=causal,
    )


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := missing_package_reason("flash_attn", "pip install flash-attn, on a CUDA machine"):
        return reason
    if device.type != "cuda":
        return f"flash-attn's kernels run on CUDA only, not {device.type}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "flash-attn 2 needs an sm80+ GPU"
    return None if dtype in DTYPES else f"flash-attn takes fp16/bf16, not {dtype}"


register_backend(
    "flash_attn",
    flash_attn_attention,
    "flash-attn's flash_attn_func (CUDA, bottom-right causal), layout (B, T, H, D)",
    _reason,
    varlen=flash_attn_varlen,
    features=FLASH_ATTN_FEATURES,
    no_feature_reason=_no_feature,
)
register_backend(
    "flash_attn_kvcache",
    flash_attn_kvcache_attention,
    "flash-attn's flash_attn_with_kvcache, the decoding kernel, k/v as the whole cache (CUDA, forward only)",
    _reason,
    no_dropout_reason=lambda device: "flash_attn_with_kvcache has no dropout",
    no_backward_reason="flash_attn_with_kvcache is an inference kernel: it has no backward",
    paged=flash_attn_paged,
)
