"""`manual`: all heads batched, explicit boolean mask, softmax, weighted sum: the plain reference of every feature."""

import torch.nn.functional as F

from .registry import (
    FEATURES,
    NAN_IN_FUTURE_VALUE,
    default_scale,
    mask_scores,
    register_backend,
    repeat_kv,
    score_matrix_bytes,
    visible_mask,
    zero_empty_rows,
)


def manual_attention(
    q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, mask_mod=None, document_ids=None, softcap=None
):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D)
    k, v = repeat_kv(k, q.size(1)), repeat_kv(v, q.size(1))  # (B, Hq, Tk, D)
    att = (q @ k.transpose(-2, -1)) * default_scale(q, scale)  # (B, Hq, Tq, Tk)
    if softcap is not None:
        att = softcap * (att / softcap).tanh()
    vis = visible_mask(q, k, causal=causal, window=window, mask_mod=mask_mod, document_ids=document_ids)
    att = mask_scores(att, vis)  # (B, Hq, Tq, Tk), -inf where hidden
    att = att.softmax(dim=-1)  # (B, Hq, Tq, Tk)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return zero_empty_rows(att @ v, vis)  # (B, Hq, Tq, D); rows seeing no key are 0


register_backend(
    "manual",
    manual_attention,
    "all heads batched, explicit boolean mask, softmax, matmul",
    features=FEATURES,
    working_set=score_matrix_bytes,  # scores and weights, (B, H, Tq, Tk) each
    nan_deviation=NAN_IN_FUTURE_VALUE,
)
