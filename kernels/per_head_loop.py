"""`per_head_loop`: each head computed on its own and concatenated (the from-scratch tutorial style)."""

import torch
import torch.nn.functional as F

from .call import BASE_FEATURES
from .contract import NAN_IN_FUTURE_VALUE, score_matrix_bytes
from .dense import default_scale, mask_scores, visible_mask, zero_empty_rows
from .registry import register_backend
from .scores import Scores


def per_head_loop_attention(
    q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, mask_mod=None, document_ids=None, softcap=None
):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D)
    scale = default_scale(q, scale)
    group = q.size(1) // k.size(1)  # query heads per key/value head
    vis = visible_mask(q, k, causal=causal, window=window, mask_mod=mask_mod, document_ids=document_ids)
    heads = []
    for h in range(q.size(1)):
        kh, vh = k[:, h // group], v[:, h // group]  # (B, Tk, D): the key/value head this query head reads
        wei = (q[:, h] @ kh.transpose(-2, -1)) * scale  # (B, Tq, Tk)
        wei = Scores(softcap).cap(wei)  # (B, Tq, Tk)
        vis_h = None if vis is None else vis[:, min(h, vis.size(1) - 1)]  # (B or 1, Tq, Tk)
        wei = mask_scores(wei, vis_h).softmax(dim=-1)  # (B, Tq, Tk)
        if dropout_p > 0.0:
            wei = F.dropout(wei, p=dropout_p)
        heads.append(zero_empty_rows(wei @ vh, vis_h))  # (B, Tq, D); rows seeing no key are 0
    return torch.stack(heads, dim=1)  # (B, Hq, Tq, D)


register_backend(
    "per_head_loop",
    per_head_loop_attention,
    "one head at a time in a Python loop, then stacked",
    features=BASE_FEATURES,
    working_set=lambda q, k: score_matrix_bytes(q[:, :1], k),  # one head's scores and weights at a time
    nan_departure=NAN_IN_FUTURE_VALUE,
)
