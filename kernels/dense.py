"""Dense helpers the backends share: the default scale, the visible mask (causal, window, mask_mod, documents) as one
boolean tensor, masking, the softmax with sinks, GQA's repeat and fp8's dequantization (score transforms: scores.py)."""

from __future__ import annotations

import functools
import math

import torch

from .visibility import Visibility


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    """1/sqrt(D), D the per-head size (not the model width), unless given."""
    return 1.0 / math.sqrt(q.size(-1)) if scale is None else scale


def bottom_right_causal_mask(tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i (absolute position Tk - Tq + i) may see key j."""
    return Visibility(causal=True).dense(1, 1, tq, tk, device)[0, 0]  # (Tq, Tk)


def visible_mask(
    q: torch.Tensor, k: torch.Tensor, *, causal: bool, window=None, mask_mod=None, document_ids=None
) -> torch.Tensor | None:
    """(B or 1, Hq or 1, Tq, Tk) bool, True where query i (absolute position Tk - Tq + i) may see key j, from
    every mask given (AND: visibility.Visibility); None when every key is visible."""
    vis = Visibility(causal, window, mask_mod, document_ids)
    return vis.dense(q.size(0), q.size(1), q.size(-2), k.size(-2), q.device)


def mask_scores(scores: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """`scores` with the keys a query may not see set to -inf, ready for softmax over the last axis. A row with
    no visible key is left unmasked (uniform weights, where a plain -inf fill would give NaN); `zero_empty_rows`
    then zeroes its output, and so its gradient. Zeroing the (Tq, D) output rather than the (Tq, Tk) weights, and
    returning the masked scores for the caller to rebind, keeps the scores' buffers as few as a plain fill's."""
    if visible is None:
        return scores
    any_visible = visible.any(dim=-1, keepdim=True)  # (..., Tq, 1)
    return scores.masked_fill(~(visible | ~any_visible), float("-inf"))


def zero_empty_rows(out: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """out: (..., Tq, D); the rows whose query sees no key (see mask_scores) become 0."""
    return out if visible is None else out * visible.any(dim=-1, keepdim=True)


def sink_softmax(scores: torch.Tensor, visible: torch.Tensor | None, sinks=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, lse) of masked scores (B, Hq, Tq, Tk) (see mask_scores) with an optional sink logit per head
    (Hq,) in the denominator: weights (B, Hq, Tq, Tk), lse (B, Hq, Tq), -inf for a row with no key and no sink."""
    weights = scores.softmax(dim=-1)
    lse = scores.logsumexp(dim=-1)  # (B, Hq, Tq) over the visible keys
    if visible is not None:
        lse = lse.masked_fill(~visible.any(dim=-1), float("-inf"))
    if sinks is not None:
        with_sink = torch.logaddexp(lse, sinks.to(lse.dtype)[:, None])  # (B, Hq, Tq)
        weights = weights * (lse - with_sink).exp()[..., None]  # the keys' share of the denominator
        lse = with_sink
    return weights, lse


def repeat_kv(x: torch.Tensor, hq: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hq, T, D): query head h gets key/value head h // (Hq // Hkv)."""
    return x if x.size(1) == hq else x.repeat_interleave(hq // x.size(1), dim=1)


def dequantize(q, k, v, descale, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp8 q, k, v times their descales (each () or (B, Hkv); a query head reads its key/value head's q_descale),
    in `dtype` (float32, what a kernel computes in; float64 gives the exact values): q (B, Hq, Tq, D), k (B, Hkv, Tk,
    D), v (B, Hkv, Tk, Dv)."""
    qd, kd, vd = (d.to(dtype).reshape(*d.shape, 1, 1) if d.dim() else d.to(dtype) for d in descale)  # (B, Hkv, 1, 1)
    qd = qd.repeat_interleave(q.size(1) // k.size(1), 1) if qd.dim() else qd  # (B, Hq, 1, 1) or ()
    return q.to(dtype) * qd, k.to(dtype) * kd, v.to(dtype) * vd


def takes_fp8(fn):
    """`fn` taking the contract's fp8 inputs: with a descale, q, k, v are dequantized to float32 (dequantize), `fn`
    computes in float32 and the output comes back in bfloat16 (FlashAttention-3's), the lse in float32."""

    @functools.wraps(fn)
    def call(q, k, v, *, descale=None, **kwargs):
        if descale is None:
            return fn(q, k, v, **kwargs)
        result = fn(*dequantize(q, k, v, descale), **kwargs)
        return (result[0].to(torch.bfloat16), result[1]) if isinstance(result, tuple) else result.to(torch.bfloat16)

    return call
