"""`manual`: all heads batched, explicit boolean mask, softmax, weighted sum: the plain reference of every feature."""

import torch.nn.functional as F

from .call import FEATURES, AttentionCall
from .contract import NAN_IN_FUTURE_VALUE, lse_dtype, score_matrix_bytes
from .dense import default_scale, mask_scores, repeat_kv, sink_softmax, takes_fp8, zero_empty_rows
from .registry import register_backend


def manual_attention(q, k, v, **keywords):
    # q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv); keywords: the contract's (call.AttentionCall)
    call = AttentionCall.of(keywords)
    k, v = repeat_kv(k, q.size(1)), repeat_kv(v, q.size(1))  # (B, Hq, Tk, D), (B, Hq, Tk, Dv)
    att = call.scores.dense((q @ k.transpose(-2, -1)) * default_scale(q, call.scale), q, k)  # (B, Hq, Tq, Tk)
    vis = call.visibility.dense(q.size(0), q.size(1), q.size(-2), k.size(-2), q.device)  # (B|1, Hq|1, Tq, Tk)
    att = mask_scores(att, vis)  # (B, Hq, Tq, Tk), -inf where hidden
    if call.sinks is None and not call.return_lse:
        att = att.softmax(dim=-1)  # (B, Hq, Tq, Tk)
    else:
        att, lse = sink_softmax(att, vis, call.sinks)  # (B, Hq, Tq, Tk), (B, Hq, Tq)
    if call.dropout_p > 0.0:
        att = F.dropout(att, p=call.dropout_p)
    out = zero_empty_rows(att @ v, vis)  # (B, Hq, Tq, Dv); rows seeing no key are 0
    return (out, lse.to(lse_dtype(q.dtype))) if call.return_lse else out


register_backend(
    "manual",
    takes_fp8(manual_attention),
    "all heads batched, explicit boolean mask, softmax, matmul",
    features=FEATURES,
    working_set=score_matrix_bytes,  # scores and weights, (B, H, Tq, Tk) each
    nan_departure=NAN_IN_FUTURE_VALUE,
)
