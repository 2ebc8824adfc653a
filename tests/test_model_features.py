"""The GPT's n_kv_head (GQA) and window: config checks, fused projection sizes, one state_dict across backends,
refusal of a backend without the features, the KV cache under a window, and the model properties failing
on backends that get GQA or the window wrong."""

from __future__ import annotations

import pytest
import torch
from attnbench import Backend, manual
from attnbench.conformance.model import PARITY_CASES
from attnbench.conformance.properties import PROPERTIES, property_dtypes, run_property
from attnbench.gpt.model import GPTConfig
from hypothesis import Phase
from spine_helpers import one_thread, tiny_model  # noqa: F401  (autouse: one torch thread)


def tokens(B=2, T=12, vocab=32, seed=0):
    return torch.randint(vocab, (B, T), generator=torch.Generator().manual_seed(seed))  # (B, T)


def test_config_checks_heads_and_window():
    with pytest.raises(ValueError, match=r"n_kv_head \(3\) must divide n_head \(4\)"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=8)
    with pytest.raises(ValueError, match="window must be >= 1"):
        GPTConfig(window=0)
    assert GPTConfig(n_head=4).attention_features() == []
    assert GPTConfig(n_head=4, n_kv_head=4).attention_features() == []  # n_kv_head == n_head is plain MHA
    assert GPTConfig(n_head=4, n_kv_head=1, window=8).attention_features() == ["gqa", "window"]


def test_gqa_shrinks_the_key_value_projection_and_the_cache():
    mha, gqa = tiny_model(), tiny_model(n_head=4, n_kv_head=1)  # n_embd 16: head size 8 vs 4
    assert mha.blocks[0].attn.c_attn.weight.shape == (3 * 16, 16)
    assert gqa.blocks[0].attn.c_attn.weight.shape == (16 + 2 * 4, 16)  # q: 16, k and v: one head of 4 each
    _, _, cache = gqa(tokens())
    assert cache[0][0].shape == (2, 1, 12, 4)  # (B, n_kv_head, T, D)


@pytest.mark.parametrize("backend", ["per_head_loop", "chunked", "sdpa", "sdpa_math", "sdpa_flash"])
def test_one_state_dict_serves_every_backend_with_the_features(backend):
    model = tiny_model("manual", n_head=4, n_kv_head=2, window=3)
    idx = tokens()
    ref = model(idx)[0]
    got = model.set_backend(backend)(idx)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_a_backend_without_the_features_is_refused_with_its_reason():
    with pytest.raises(
        ValueError, match="'compiled_manual' cannot run this GPT .*compiled_manual does not implement gqa"
    ):
        tiny_model("compiled_manual", n_head=2, n_kv_head=1)
    model = tiny_model("manual", window=4)
    with pytest.raises(ValueError, match="compiled_manual does not implement window"):
        model.set_backend("compiled_manual")
    assert model.backend == "manual"  # refused before anything changed


def test_the_window_holds_with_and_without_the_kv_cache():
    model = tiny_model("manual", n_head=2, n_kv_head=1, window=3)
    g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
    with_cache = model.generate(tokens(B=1, T=2), 12, use_cache=True, generator=g1)
    without = model.generate(tokens(B=1, T=2), 12, use_cache=False, generator=g2)
    assert torch.equal(with_cache, without)


def _wrong(fn, name: str) -> Backend:
    return Backend(name, fn, name, features={"gqa", "window"})


def _window_ignored(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None):
    return manual.manual_attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


def _window_off_by_one(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None):
    return manual.manual_attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, window=window + 1)


def _kv_head_modulo(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None):
    """Query head h reads key/value head h % Hkv instead of h // (Hq // Hkv)."""
    heads = torch.arange(q.size(1), device=q.device) % k.size(1)
    k, v = k.index_select(1, heads), v.index_select(1, heads)  # (B, Hq, Tk, D)
    return manual.manual_attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, window=window)


@pytest.mark.parametrize(
    ("prop", "wrong"),
    [
        ("model_window_reach", _wrong(_window_ignored, "window_ignored")),
        ("model_window_reach", _wrong(_window_off_by_one, "window_off_by_one")),
        ("model_gqa_window_parity", _wrong(_window_ignored, "window_ignored")),
        ("model_gqa_window_parity", _wrong(_kv_head_modulo, "kv_head_modulo")),
    ],
    ids=lambda x: x if isinstance(x, str) else x.name,
)
def test_the_model_properties_catch_wrong_gqa_and_window(prop, wrong):
    with pytest.raises(AssertionError):
        run_property(
            PROPERTIES[prop],
            wrong,
            "cpu",
            [torch.float32],
            max_examples=20,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
        )


def test_parity_cases_exercise_both_features():
    assert all(mc.n_kv_head < mc.n_head and mc.window < mc.T for mc in PARITY_CASES)


@pytest.mark.parametrize("prop", ["model_parity", "model_gqa_window_parity"])
def test_forward_only_backends_skip_the_model_parity_properties(prop):
    # Both compare gradients and an AdamW step: a forward-only backend that declares gqa + window skips them with
    # its reason (model_gqa_window_parity used to run, and error, on a correct forward-only kernel).
    forward_only = Backend(
        "forward_only_manual", manual.manual_attention, "manual, forward-only", features={"gqa", "window"},
        no_backward_reason="an inference runtime",
    )  # fmt: skip
    with pytest.raises(pytest.skip.Exception, match="has no backward: an inference runtime"):
        property_dtypes(PROPERTIES[prop], forward_only, "cpu")
