"""Cost accounting under the contract's masks: visible (query, key) pairs and the FLOPs counted from them."""

from __future__ import annotations

import itertools

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.measure import attention_inputs
from attnbench.bench.measuring.roofline import mask_visible_pairs, pairs_flops
from attnbench.conformance.features import MASK_MODS
from attnbench.conformance.masked_reference import Features, reference_visible
from torch.utils.flop_counter import FlopCounterMode


def reference_pairs(B, H, Tq, Tk, causal, **features) -> int:
    """Pairs counted on the conformance suite's independent mask (masked_reference.reference_visible)."""
    return int(reference_visible(B, H, Tq, Tk, causal, Features(**features), "cpu").sum())


@pytest.mark.parametrize(("Tq", "Tk", "window"), itertools.product([1, 5, 9], [9, 16], [None, 1, 3, 8, 40]))
def test_closed_form_pairs_match_the_mask(Tq, Tk, window):
    assert mask_visible_pairs(2, 3, Tq, Tk, window=window) == reference_pairs(2, 3, Tq, Tk, True, window=window)
    assert mask_visible_pairs(2, 3, Tq, Tk, causal=False) == 2 * 3 * Tq * Tk


@pytest.mark.parametrize("mask", sorted(MASK_MODS))
def test_document_and_mask_mod_pairs_match_the_mask(mask):
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2], [5, 5, 6, 6, 6, 6, 7, 7, 8, 8]])  # (B, Tk)
    for causal in (True, False):
        kw = {"document_ids": docs, "mask_mod": MASK_MODS[mask]}
        assert mask_visible_pairs(2, 3, 7, 10, causal=causal, **kw) == reference_pairs(2, 3, 7, 10, causal, **kw)


def test_a_window_makes_the_work_linear_in_T():
    w = 256
    for T in (1024, 8192):  # the first w rows see 1 .. w keys, every later row exactly w
        assert mask_visible_pairs(1, 4, T, T, window=w) == 4 * (w * (w + 1) // 2 + (T - w) * w)
    assert mask_visible_pairs(1, 1, 8192, 8192, window=w) - mask_visible_pairs(1, 1, 4096, 4096, window=w) == 4096 * w


def test_flops_of_all_pairs_equal_the_counted_dense_forward():
    """torch's FLOP counter sees manual's two dense matmuls; with every pair visible that is the whole work."""
    B, H, T, D = 1, 2, 64, 16
    q, k, v, _ = attention_inputs(B, H, T, D, "cpu", torch.float32, requires_grad=False)
    with FlopCounterMode(display=False) as counter:
        get_backend("manual")(q, k, v, causal=False)
    assert counter.get_total_flops() == pairs_flops(mask_visible_pairs(B, H, T, T, causal=False), D, "fwd")
    assert pairs_flops(10, D, "fwd+bwd") == 3.5 * pairs_flops(10, D, "fwd")
    with pytest.raises(ValueError, match="mode"):
        pairs_flops(10, D, "backward")
