"""The train-to-target harness in miniature (CI): a tiny GPT on a generated corpus reaches a modest target, and
the causality-leak detector flags a model without a causal mask but not a correct one.

The corpus is a random order-2 Markov chain, so the best loss any causal model can reach is known exactly: the
cross-entropy of the true chain on the val split. The leak floor sits a little below it; a model that sees the
next character copies it and drops far below.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from attnbench import registry
from attnbench.bench.measuring.train_to_target import (
    FAST_RECIPE,
    GQA_WINDOW_RECIPE,
    Recipe,
    cpu_backends,
    curve_agreement,
    recipe_unavailable_reason,
    train_to_target,
)
from attnbench.gpt.data import Dataset

try:
    from mutants import no_causal_mask  # tests/mutants.py (the mutation catalogue)
except ImportError:  # catalogue not there: the same bug, locally

    def no_causal_mask(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)  # (B, H, Tq, Tk), no mask
        return att @ v  # (B, H, Tq, D)


VOCAB = "abcdefgh"
N_CHARS = 30_000


def markov_corpus(n: int, seed: int = 0) -> tuple[str, torch.Tensor]:
    """Text from a random order-2 chain over VOCAB, and its transition table P[a, b, c] = p(c | a, b)."""
    g = torch.Generator().manual_seed(seed)
    V = len(VOCAB)
    P = -torch.log(torch.rand(V, V, V, generator=g)).pow(3.0)  # (V, V, V) heavy-tailed weights: peaked rows
    P = P / P.sum(-1, keepdim=True)  # (V, V, V)
    ids = [0, 1]
    u = torch.rand(n, generator=g)
    cdf = P.cumsum(-1)  # (V, V, V)
    for i in range(n - 2):
        ids.append(min(int(torch.searchsorted(cdf[ids[-2], ids[-1]], u[i])), V - 1))
    return "".join(VOCAB[i] for i in ids), P


def chain_cross_entropy(ids: torch.Tensor, P: torch.Tensor) -> float:
    """Mean -log p(x_t | x_{t-2}, x_{t-1}) of the true chain over a split: what the ideal causal model scores."""
    return -P[ids[:-2], ids[1:-1], ids[2:]].log().mean().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Ops of this size gain nothing from a second thread, and on a busy shared CPU two threads that wait for each
    other at every op barrier run many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus():
    text, P = markov_corpus(N_CHARS)
    ds = Dataset.from_text(text)
    assert ds.tokenizer.chars == list(VOCAB)  # token id == VOCAB index, so P indexes by token ids
    return ds, chain_cross_entropy(ds.val, P)


def tiny_recipe(entropy: float) -> Recipe:
    return Recipe(
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=16,
        batch_size=32,
        learning_rate=1e-2,
        min_lr=1e-3,
        warmup_iters=10,
        max_iters=300,
        target=entropy + 0.15,  # modest: within reach of a correct model in a couple of hundred steps
        eval_interval=20,
        probe_iters=2,
        fine_margin=0.1,
        fine_interval=10,
        # A causal model cannot beat the true chain in expectation; 0.1 nats leaves room for the first two
        # positions of each window (less context, higher loss) going the other way and for sampling noise.
        leak_floor=entropy - 0.1,
    )


def test_reaches_target_and_is_not_flagged(corpus):
    ds, entropy = corpus
    recipe = tiny_recipe(entropy)
    runs = [train_to_target(b, ds, recipe) for b in ("sdpa", "manual")]
    for r in runs:
        assert r.reached, f"{r.backend} did not reach {recipe.target:.3f}: curve {r.curve}, estimates {r.probe_curve}"
        assert r.final_val_loss <= recipe.target
        assert r.curve[-1] == [r.steps, r.final_val_loss]
        assert 0 < r.train_seconds and 0 < r.eval_seconds
        assert not r.leak_flag, f"{r.backend} flagged: min loss {r.min_loss:.3f} < floor {r.leak_floor:.3f}"
    agreement = curve_agreement(runs)
    # same seed, same data, two exact algorithms: only float rounding separates the curves
    assert agreement["max_abs_diff"] is not None and agreement["max_abs_diff"] < 1e-3, agreement
    assert agreement["steps_to_target"]["sdpa"] == agreement["steps_to_target"]["manual"]
    assert agreement["leaks"] == []


def test_no_mask_model_is_flagged(corpus):
    ds, entropy = corpus
    recipe = tiny_recipe(entropy)
    spec = f"{no_causal_mask.__module__}:{no_causal_mask.__name__}"  # unregistered: loaded by 'module:function'
    r = train_to_target(spec, ds, recipe)
    assert r.leak_flag, f"no-mask model not flagged: min loss {r.min_loss:.3f}, floor {r.leak_floor:.3f}"
    assert r.min_loss < r.leak_floor


def test_budget_exhausted_is_not_reached(corpus):
    ds, entropy = corpus
    recipe = dataclasses.replace(tiny_recipe(entropy), max_iters=20, target=0.0, leak_floor=-1.0)
    r = train_to_target("sdpa", ds, recipe)
    assert not r.reached and r.steps == 20 and r.curve and r.curve[-1][0] == 20
    assert not math.isnan(r.final_val_loss)


@pytest.fixture
def gqa_only_backend(monkeypatch):
    """A backend that implements GQA but no sliding window, registered for one test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    sdpa = registry.get_backend("sdpa")
    return registry.register_backend("gqa_only", sdpa.fn, "sdpa without its window", features={"gqa"}).name


def test_the_gqa_window_recipe_trains_exactly_the_backends_with_both_features(gqa_only_backend):
    assert GQA_WINDOW_RECIPE.model_config("sdpa").attention_features() == ["gqa", "window"]
    chosen = cpu_backends("cpu", GQA_WINDOW_RECIPE)
    assert {"sdpa", "manual"} <= set(chosen)  # both features on CPU
    for name in ("compiled_manual", gqa_only_backend):  # they train the fast recipe, but lack a feature
        assert name in cpu_backends("cpu", FAST_RECIPE) and name not in chosen
    assert recipe_unavailable_reason(gqa_only_backend, GQA_WINDOW_RECIPE) == "gqa_only does not implement window"
    assert recipe_unavailable_reason("compiled_manual", GQA_WINDOW_RECIPE) == (
        "compiled_manual does not implement gqa; compiled_manual does not implement window"
    )
    for name in registry.backend_names():  # every backend: chosen exactly when it trains on CPU with both features
        b = registry.get_backend(name)
        trains = b.why_unsupported("cpu", torch.float32) is None and b.why_no_backward("cpu") is None
        has_both = all(b.why_no_feature(f, "cpu") is None for f in ("gqa", "window"))
        assert (name in chosen) == (trains and has_both), name
