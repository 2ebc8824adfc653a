"""Sampling: with and without the KV cache, the same seed gives the same tokens under every backend."""

from __future__ import annotations

import pytest
import torch
from attnbench.conformance.backends import backend_params
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    require_cpu_fp32,
    tiny_model,
)


def prompt(T=5, seed=1):
    return torch.randint(32, (2, T), generator=torch.Generator().manual_seed(seed))  # (B, T)


@pytest.mark.parametrize("top_k", [None, 5])
@pytest.mark.parametrize("backend", backend_params())
def test_cached_and_uncached_generation_agree(backend, top_k):
    require_cpu_fp32(backend)
    model = tiny_model(backend.name)  # block_size 16: 30 new tokens run past it, so the cache is rebuilt
    idx = prompt()
    runs = [
        model.generate(idx, 30, temperature=0.9, top_k=top_k, use_cache=c, generator=torch.Generator().manual_seed(7))
        for c in (True, False)
    ]
    assert runs[0].shape == (2, 35) and torch.equal(runs[0][:, :5], idx)
    assert torch.equal(runs[0], runs[1])


def test_same_seed_same_text_and_top_k_one_is_greedy():
    model = tiny_model()
    idx = prompt()
    a, b, c = (model.generate(idx, 12, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = [model.generate(idx, 12, top_k=1, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    assert torch.equal(greedy[0], greedy[1])  # top_k=1 leaves no choice whatever the seed
    logits, _, _ = model(greedy[0][:, :-1])
    assert torch.equal(logits[:, idx.size(1) - 1 :].argmax(-1), greedy[0][:, idx.size(1) :])


def test_bad_sampling_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt(), 1, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt(), 1, top_k=0)
