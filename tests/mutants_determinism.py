"""Deliberately nondeterministic kernels, built on a batch-invariant formula (test assets, never registered).

The base, `invariant_attention`, reduces with elementwise products and sums over the last axes: every output
element is summed in the same order whatever the batch size or the number of query rows (PyTorch's matmul is
not: it picks its kernel by the matrix sizes). Each mutant breaks that in one way real kernels do:
- split_kv_by_batch: a split-KV heuristic choosing its splits from the batch size (flash-attention's
  num_splits heuristic, Dao-AILab/flash-attention#1897): small batches split the keys in two and sum each
  half's weighted values apart, normalized by the halves' combined log-sum-exp. Right by every other property
  (the full kill table: batch_invariance alone kills it), equal in exact arithmetic, not in the last bits.
- racing_atomics: weights @ values summed in a random key order on one call in 16, as atomic adds that race
  do now and then; two calls usually agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attnbench import bottom_right_causal_mask, default_scale
from mutants import Mutant

SPLIT_BELOW_BATCH = 4  # the heuristic splits the keys when the batch is smaller (too few programs otherwise)
RACE_ODDS = 16  # one call in RACE_ODDS sums in a random order


def _scores(q, k, *, causal, scale) -> torch.Tensor:
    """(B, H, Tq, Tk) scaled, masked scores from elementwise products: each summed over D alone."""
    s = (q[..., :, None, :] * k[..., None, :, :]).sum(-1) * default_scale(q, scale)  # (B, H, Tq, Tk)
    if causal:
        s = s.masked_fill(~bottom_right_causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
    return s


def _weighted_sum(p, v) -> torch.Tensor:
    """(B, H, Tq, Tk) weights, (B, H, Tk, D) values -> (B, H, Tq, D), each output summed over the keys alone."""
    return (p[..., None] * v[..., None, :, :]).sum(-2)


def invariant_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    p = F.dropout(_scores(q, k, causal=causal, scale=scale).softmax(-1), p=dropout_p)  # (B, H, Tq, Tk)
    return _weighted_sum(p, v)


def split_kv_by_batch(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    s = _scores(q, k, causal=causal, scale=scale)  # (B, H, Tq, Tk)
    half = s.size(-1) // 2
    if q.size(0) >= SPLIT_BELOW_BATCH or half == 0:
        return _weighted_sum(F.dropout(s.softmax(-1), p=dropout_p), v)
    halves = torch.stack([s[..., :half].logsumexp(-1), s[..., half:].logsumexp(-1)])  # (2, B, H, Tq)
    p = F.dropout((s - halves.logsumexp(0)[..., None]).exp(), p=dropout_p)  # (B, H, Tq, Tk), by the halves' LSE
    return _weighted_sum(p[..., :half], v[..., :half, :]) + _weighted_sum(p[..., half:], v[..., half:, :])


def racing_atomics(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    p = F.dropout(_scores(q, k, causal=causal, scale=scale).softmax(-1), p=dropout_p)  # (B, H, Tq, Tk)
    if int(torch.randint(RACE_ODDS, ())) == 0:
        order = torch.randperm(k.size(-2), device=q.device)  # this call's (racing) order of the key sum
        p, v = p[..., order], v[..., order, :]
    return _weighted_sum(p, v)


MUTANTS = [
    Mutant(
        "split_kv_by_batch",
        split_kv_by_batch,
        "keys split in two below batch 4, halves combined by log-sum-exp",
        batch_invariant=True,
    ),
    Mutant("racing_atomics", racing_atomics, "one call in 16 sums weights @ values in a random key order"),
]
