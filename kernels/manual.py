"""`manual`: all heads batched, explicit causal mask with masked_fill(-inf), softmax, weighted sum."""

import torch.nn.functional as F

from .registry import NAN_IN_FUTURE_VALUE, bottom_right_causal_mask, default_scale, register_backend, score_matrix_bytes


def manual_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D)
    att = (q @ k.transpose(-2, -1)) * default_scale(q, scale)  # (B, H, Tq, Tk)
    if causal:
        mask = bottom_right_causal_mask(q.size(-2), k.size(-2), q.device)  # (Tq, Tk)
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, H, Tq, D)


register_backend(
    "manual",
    manual_attention,
    "all heads batched, explicit -inf causal mask, softmax, matmul",
    working_set=score_matrix_bytes,  # scores and weights, (B, H, Tq, Tk) each
    nan_deviation=NAN_IN_FUTURE_VALUE,
)
