"""The SDPA family: `torch.nn.functional.scaled_dot_product_attention`, free or pinned to one kernel.

SDPA's own `is_causal=True` aligns the mask to the top left when Tq != Tk. The contract wants bottom-right
alignment, so for Tq < Tk: a single query (a decode step) is the last position and sees every key, so it runs
with no mask; a kernel that takes a boolean mask gets the bottom-right causal mask (Tq x Tk, no wasted rows);
only a kernel that takes no mask (CUDA's flash and, here, cuDNN) gets Tk - Tq dummy query rows prepended, runs
the square causal case (where both alignments agree) and keeps the last Tq rows. Padding every short query
block cost a decode step at Tk = 4096 the whole square: 130x manual's time on CPU. The mask is what PyTorch's own
`causal_lower_right` bias amounts to on CPU; like any additive mask it lets a NaN in a future key reach earlier
rows (declared in SDPA_CPU_NAN).

Features: GQA through SDPA's own `enable_gqa=True` (no copy of k/v); window, document_ids and mask_mod through
one boolean `attn_mask` (True = may attend) that carries the causal rule too. No softcap: SDPA has no hook on
the logits. Which pinned kernel takes what (torch 2.13): on CPU, math and flash take enable_gqa and a boolean
mask (checked by the conformance suite); on CUDA, flash takes no attn_mask at all (is_causal only), the
memory-efficient kernel takes a mask but not enable_gqa, and the cuDNN kernel is given neither (its support
varies with the cuDNN version, and no GPU here checks it); see `_feature_reason`.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .contract import NAN_IN_FUTURE_KEY_OR_VALUE, NAN_IN_FUTURE_VALUE, NanDeparture, score_matrix_bytes
from .dense import visible_mask
from .registry import register_backend

FEATURES = frozenset({"gqa", "window", "mask_mod", "document_ids"})
MASKS = ("window", "mask_mod", "document_ids")  # the features SDPA receives as a boolean attn_mask

# PyTorch's own CPU flash kernel (what sdpa picks on CPU), found by the nan_contract property
SDPA_CPU_NAN = NanDeparture(
    "on CPU, a NaN in q can give a finite (all-zero) row when Tk < 16, and so can a NaN in the only key (Tk = 1); "
    f"{NAN_IN_FUTURE_VALUE}; with Tq < Tk (the bottom-right mask is a boolean attn_mask, added to the scores) so "
    "does a NaN in a future key",
    spreads={"key", "value"},
    hides={"q", "key"},
)


def sdpa_attention(
    q,
    k,
    v,
    *,
    causal=True,
    dropout_p=0.0,
    scale=None,
    window=None,
    mask_mod=None,
    document_ids=None,
    kernel: SDPBackend | None = None,
):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D)
    tq, tk = q.size(-2), k.size(-2)
    # Fused kernels need a unit last stride; .contiguous() keeps odd strides on size-1 dims, a clone does not.
    q, k, v = (t if t.stride(-1) == 1 else t.clone(memory_format=torch.contiguous_format) for t in (q, k, v))
    gqa = q.size(1) != k.size(1)
    feature_masks = window is not None or mask_mod is not None or document_ids is not None
    if feature_masks or (causal and 1 < tq < tk and _takes_mask(kernel, q.device)):
        mask = visible_mask(q, k, causal=causal, window=window, mask_mod=mask_mod, document_ids=document_ids)
        with sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext():
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa
            )  # (B, Hq, Tq, D); mask: (B or 1, Hq or 1, Tq, Tk)
    causal = causal and tq > 1  # a single query is the last position: it sees every key, no mask needed
    pad_rows = tk - tq if causal else 0
    if pad_rows:
        pad = q.new_zeros(*q.shape[:-2], pad_rows, q.size(-1))  # (B, Hq, Tk - Tq, D)
        q = torch.cat([pad, q], dim=-2)  # (B, Hq, Tk, D): square, so top-left == bottom-right
    with sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa
        )
    return out[..., pad_rows:, :]  # (B, Hq, Tq, D)


def _takes_mask(kernel: SDPBackend | None, device: torch.device) -> bool:
    """Whether SDPA, pinned to `kernel` (None: PyTorch picks), accepts a boolean attn_mask on `device`."""
    return device.type != "cuda" or kernel not in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION)


def _feature_reason(kernel: str):
    """no_feature_reason for SDPA pinned to `kernel`: which declared feature that kernel refuses on a device."""

    def reason(feature: str, device: torch.device) -> str | None:
        if device.type != "cuda":
            return None  # the CPU math and flash kernels take enable_gqa and a boolean mask
        if kernel == "flash" and feature in MASKS:
            return "PyTorch's CUDA flash kernel takes no attn_mask (is_causal only)"
        if kernel == "efficient" and feature == "gqa":
            return "PyTorch's memory-efficient kernel takes no enable_gqa (flash and math do)"
        if kernel == "cudnn":
            return "SDPA's cuDNN kernel is not given GQA or masks here (support varies by cuDNN version, unchecked)"
        return None

    return reason


def _sm(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _flash_reason(device, dtype):
    if device.type == "cpu":
        return None  # PyTorch ships a CPU flash kernel for every floating dtype
    if device.type != "cuda":
        return f"flash runs on CPU and CUDA, not {device.type}"
    if _sm(device) < (8, 0):
        return f"flash needs CUDA sm80+, this GPU is sm{''.join(map(str, _sm(device)))}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash on CUDA needs fp16/bf16, not {dtype}"
    return None


def _flash_no_dropout_reason(device):
    return "PyTorch's CPU flash kernel has no dropout (CUDA's has)" if device.type == "cpu" else None


def _efficient_reason(device, dtype):
    if device.type != "cuda":
        return "memory-efficient attention needs CUDA; PyTorch has no CPU kernel for it"
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"memory-efficient attention supports fp16/bf16/fp32, not {dtype}"
    return None


def _cudnn_reason(device, dtype):
    if device.type != "cuda":
        return "cuDNN attention needs CUDA"
    if not torch.backends.cudnn.is_available():
        return "cuDNN is not available in this PyTorch build"
    if _sm(device) < (8, 0):
        return "cuDNN attention needs sm80+"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"cuDNN attention needs fp16/bf16, not {dtype}"
    return None


register_backend(
    "sdpa",
    sdpa_attention,
    "F.scaled_dot_product_attention, PyTorch picks the kernel",
    features=FEATURES,
    nan_departure=SDPA_CPU_NAN,
)
register_backend(
    "sdpa_math",
    functools.partial(sdpa_attention, kernel=SDPBackend.MATH),
    "SDPA pinned to the math (reference, materialized) kernel",
    features=FEATURES,
    working_set=score_matrix_bytes,  # scores and weights, (B, H, Tq, Tk) each, like manual
    nan_departure=NAN_IN_FUTURE_KEY_OR_VALUE.said_of("PyTorch's math kernel"),
)
register_backend(
    "sdpa_flash",
    functools.partial(sdpa_attention, kernel=SDPBackend.FLASH_ATTENTION),
    "SDPA pinned to the flash-attention kernel (blockwise, O(T) memory)",
    _flash_reason,
    no_dropout_reason=_flash_no_dropout_reason,
    features=FEATURES,
    no_feature_reason=_feature_reason("flash"),
    nan_departure=SDPA_CPU_NAN,
)
register_backend(
    "sdpa_efficient",
    functools.partial(sdpa_attention, kernel=SDPBackend.EFFICIENT_ATTENTION),
    "SDPA pinned to the memory-efficient (xFormers-style) kernel",
    _efficient_reason,
    features=FEATURES,
    no_feature_reason=_feature_reason("efficient"),
)
register_backend(
    "sdpa_cudnn",
    functools.partial(sdpa_attention, kernel=SDPBackend.CUDNN_ATTENTION),
    "SDPA pinned to the cuDNN attention kernel",
    _cudnn_reason,
    features=FEATURES,
    no_feature_reason=_feature_reason("cudnn"),
)
