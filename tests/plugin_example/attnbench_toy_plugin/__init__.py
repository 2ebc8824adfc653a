"""A toy attention backend living in its own package: log-sum-exp softmax, written without attnbench code (it
imports attnbench only to declare how it departs from the NaN contract)."""

import math

import torch
from attnbench import NanDeparture


def toy_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """toy plug-in: log-sum-exp softmax in plain torch (an example third-party backend)."""
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D); causal mask aligned bottom-right (query i at Tk - Tq + i)
    tq, tk = q.size(-2), k.size(-2)
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)) if scale is None else scale)  # (B, H, Tq, Tk)
    if causal:
        rows = torch.arange(tk - tq, tk, device=q.device)[:, None]  # (Tq, 1) absolute query positions
        s = s.masked_fill(torch.arange(tk, device=q.device)[None, :] > rows, float("-inf"))
    p = torch.exp(s - torch.logsumexp(s, dim=-1, keepdim=True))  # (B, H, Tq, Tk)
    if dropout_p > 0.0:
        p = torch.nn.functional.dropout(p, p=dropout_p)
    return p @ v  # (B, H, Tq, D)


toy_attention.nan_departure = NanDeparture(
    "a NaN in a future value reaches earlier rows (0 * NaN in p @ v)", spreads={"value"}
)
