"""`manual`: all heads batched, explicit boolean mask, softmax, weighted sum: the plain reference of every feature."""

import torch.nn.functional as F

from .contract import FEATURES, NAN_IN_FUTURE_VALUE, lse_dtype, score_matrix_bytes
from .dense import (
    default_scale,
    mask_scores,
    repeat_kv,
    shaped_scores,
    sink_softmax,
    takes_fp8,
    visible_mask,
    zero_empty_rows,
)
from .registry import register_backend


def manual_attention(
    q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, mask_mod=None, document_ids=None, softcap=None,
    score_mod=None, alibi_slopes=None, sinks=None, return_lse=False
):  # fmt: skip
    # q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv)
    k, v = repeat_kv(k, q.size(1)), repeat_kv(v, q.size(1))  # (B, Hq, Tk, D), (B, Hq, Tk, Dv)
    att = (q @ k.transpose(-2, -1)) * default_scale(q, scale)  # (B, Hq, Tq, Tk)
    att = shaped_scores(att, q, k, softcap=softcap, score_mod=score_mod, alibi_slopes=alibi_slopes)
    vis = visible_mask(q, k, causal=causal, window=window, mask_mod=mask_mod, document_ids=document_ids)
    att = mask_scores(att, vis)  # (B, Hq, Tq, Tk), -inf where hidden
    if sinks is None and not return_lse:
        att = att.softmax(dim=-1)  # (B, Hq, Tq, Tk)
    else:
        att, lse = sink_softmax(att, vis, sinks)  # (B, Hq, Tq, Tk), (B, Hq, Tq)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    out = zero_empty_rows(att @ v, vis)  # (B, Hq, Tq, Dv); rows seeing no key are 0
    return (out, lse.to(lse_dtype(q.dtype))) if return_lse else out


register_backend(
    "manual",
    takes_fp8(manual_attention),
    "all heads batched, explicit boolean mask, softmax, matmul",
    features=FEATURES,
    working_set=score_matrix_bytes,  # scores and weights, (B, H, Tq, Tk) each
    nan_departure=NAN_IN_FUTURE_VALUE,
)
