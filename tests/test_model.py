"""The one GPT: config checks, T > block_size, backend switching on a live model, optimizer groups."""

from __future__ import annotations

import pytest
import torch
from attnbench import UnknownBackendError
from attnbench.conformance.backends import backend_params
from attnbench.gpt.model import GPT, GPTConfig
from attnbench.gpt.train import make_optimizer
from spine_helpers import (
    one_thread,  # noqa: F401  (autouse: one torch thread)
    require_cpu_fp32,
    tiny_model,
    tiny_train_config,
)


def tokens(B=2, T=10, vocab=32, seed=0):
    return torch.randint(vocab, (B, T), generator=torch.Generator().manual_seed(seed))  # (B, T)


def test_config_is_validated():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.0)
    with pytest.raises(ValueError, match="n_layer must be >= 1"):
        GPTConfig(n_layer=0)


def test_sequence_longer_than_block_size_is_an_error():
    model = tiny_model()  # block_size 16
    model(tokens(T=16))  # exactly the block is fine
    with pytest.raises(ValueError, match="17 tokens exceeds block_size 16"):
        model(tokens(T=17))
    _, _, cache = model(tokens(T=10))
    with pytest.raises(ValueError, match=r"exceeds block_size 16 \(10 cached \+ 7 new\)"):
        model(tokens(T=7), cache=cache)
    with pytest.raises(ValueError, match=r"\(B, T\) token ids"):
        model(tokens()[0])


def test_shapes_loss_and_weight_tying():
    model = tiny_model()
    idx = tokens()
    logits, loss, cache = model(idx, idx)
    assert logits.shape == (2, 10, 32) and loss.shape == ()
    assert len(cache) == 2 and cache[0][0].shape == (2, 2, 10, 8)  # per layer (B, H, T, D)
    assert model.lm_head.weight is model.wte.weight
    assert abs(loss.item() - torch.log(torch.tensor(32.0)).item()) < 0.2  # GPT-2 init: close to uniform


@pytest.mark.parametrize("backend", backend_params())
def test_switch_backend_on_a_live_model(backend):
    require_cpu_fp32(backend)
    model = tiny_model("manual")
    idx = tokens()
    with torch.no_grad():  # inference: forward-only backends switch in too
        ref, _, _ = model(idx)
        model.set_backend(backend.name)
        assert model.backend == backend.name and all(b.attn.backend is backend for b in model.blocks)
        out, _, _ = model(idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_unknown_backend_leaves_the_model_unchanged():
    model = tiny_model("manual")
    with pytest.raises(UnknownBackendError, match="known backends"):
        model.set_backend("nope")
    assert model.backend == "manual"
    with pytest.raises(UnknownBackendError):
        tiny_model("nope")


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = tiny_model()
    decay, no_decay = make_optimizer(model, tiny_train_config()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert decayed and all(
        n.endswith("weight") and "ln" not in n and "wte" not in n and "wpe" not in n for n in decayed
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("attention_fp32", [False, True])
def test_attention_fp32_runs_the_backend_in_float32_under_bf16_autocast(monkeypatch, attention_fp32):
    # Pass criterion: under a bf16 autocast the backend is handed float32 q, k, v exactly when attention_fp32 is
    # set, the block still gets autocast's dtype back, and a float64 model is never cast down.
    seen = []
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, attention_fp32=attention_fp32))
    for block in model.blocks:
        backend = block.attn.backend
        monkeypatch.setattr(block.attn, "backend", lambda q, k, v, backend=backend, **kw: (
            seen.append((q.dtype, k.dtype, v.dtype)), backend(q, k, v, **kw))[1])  # fmt: skip
    idx = torch.randint(0, 65, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss, _ = model(idx, idx)
    want = torch.float32 if attention_fp32 else torch.bfloat16
    assert seen == [(want, want, want)] and logits.dtype == torch.bfloat16
    loss.backward()  # the cast is differentiable: every weight gets a gradient
    assert all(p.grad is not None for p in model.parameters())
    seen.clear()
    model.double()(idx, idx)
    assert seen == [(torch.float64,) * 3]
