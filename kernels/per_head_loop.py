"""`per_head_loop`: each head computed on its own and concatenated (the from-scratch tutorial style)."""

import torch
import torch.nn.functional as F

from .registry import NAN_IN_FUTURE_VALUE, bottom_right_causal_mask, default_scale, register_backend, score_matrix_bytes


def per_head_loop_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D)
    scale = default_scale(q, scale)
    mask = bottom_right_causal_mask(q.size(-2), k.size(-2), q.device) if causal else None  # (Tq, Tk)
    heads = []
    for h in range(q.size(1)):
        wei = (q[:, h] @ k[:, h].transpose(-2, -1)) * scale  # (B, Tq, Tk)
        if mask is not None:
            wei = wei.masked_fill(~mask, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        if dropout_p > 0.0:
            wei = F.dropout(wei, p=dropout_p)
        heads.append(wei @ v[:, h])  # (B, Tq, D)
    return torch.stack(heads, dim=1)  # (B, H, Tq, D)


register_backend(
    "per_head_loop",
    per_head_loop_attention,
    "one head at a time in a Python loop, then stacked",
    working_set=lambda q, k: score_matrix_bytes(q[:, :1], k),  # one head's scores and weights at a time
    nan_deviation=NAN_IN_FUTURE_VALUE,
)
