"""Your kernel inside real models: tiny Hugging Face transformers models, built offline from their configs (random
weights, no hub download), with the backend plugged in through transformers' attention-function registry.

    model = build("mistral", torch.float32)           # 2 layers, GQA 4:2, head dim 16, sliding window 8
    use_backend(model, attnbench.get_backend("chunked"))

The families and what their attention asks of a backend (features it must declare, else the test skips):

    llama    GQA                                   (LlamaForCausalLM)
    mistral  GQA, a sliding window on every layer  (MistralForCausalLM)
    gemma2   GQA, softcap 5, sliding window on every other layer, query_pre_attn_scalar scale (Gemma2ForCausalLM)
    gpt_oss  GQA, attention sinks (a learned logit per head), window on every other layer, 2 experts (GptOssForCausalLM)

transformers calls the registered function as fn(module, query, key, value, attention_mask, scaling=...,
dropout=..., sliding_window=..., softcap=...) with query (B, Hq, Tq, D) and key/value (B, Hkv, Tk, D) after RoPE and
the KV cache; it wants (B, Tq, Hq, D) back. The adapter passes causal=True (bottom-right: a cached decode step is
the last row), the layer's window and softcap, and ignores the model's mask: the inputs here have no padding.
"""

from __future__ import annotations

import importlib.util

import torch
from attnbench import Backend
from attnbench.hf_attention import import_transformers

from .masked_reference import Features, masked_attention_formula

INSTALL = "pip install 'attnbench[transformers]'"
COMMON = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA 4:2
    head_dim=16,
    max_position_embeddings=128,
)
FAMILIES = {  # name -> (config class, model class, config fields beyond COMMON, contract features it needs)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, ("gqa",)),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}, ("gqa", "window")),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "sliding_window": 8,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": None,
            "query_pre_attn_scalar": 32,
        },
        ("gqa", "window", "softcap"),
    ),
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(sliding_window=8, num_local_experts=2, num_experts_per_tok=1, rope_parameters={"rope_type": "default"}),
        ("gqa", "window", "sinks"),
    ),
}


def _reference(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, softcap=None, sinks=None):
    """The suite's float64 formula (masked_reference.py), whatever the input dtype. transformers' eager attention
    is no reference: its softmax runs in float32 even for float64 inputs."""
    f = Features(window=window, softcap=softcap, sinks=None if sinks is None else sinks.double())
    return masked_attention_formula(q.double(), k.double(), v.double(), causal=causal, scale=scale, f=f).to(q.dtype)


REFERENCE = Backend(
    "float64 reference", _reference, "the float64 formula", features={"gqa", "window", "softcap", "sinks"}
)
_NAMES: dict[str, str] = {}  # backend name -> the name its attention function is registered under


def missing_transformers() -> str | None:
    return None if importlib.util.find_spec("transformers") else f"transformers is not installed ({INSTALL})"


def build(family: str, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A tiny random `family` model in eval mode, the same weights for the same seed whatever the dtype."""
    tf = import_transformers()
    config_cls, model_cls, extra, _ = FAMILIES[family]
    # eager experts (a loop of matmuls): the grouped-matmul kernel of MoE layers takes no float64
    config = getattr(tf, config_cls)(**COMMON, **extra, attn_implementation="eager", experts_implementation="eager")
    torch.manual_seed(seed)
    return getattr(tf, model_cls)(config).to(dtype).eval()


def use_backend(model: torch.nn.Module, backend: Backend | None) -> torch.nn.Module:
    """Route the model's attention through `backend` (registered with transformers under its name); None: eager."""
    if backend is None:
        model.set_attn_implementation("eager")
        return model
    tf = import_transformers()
    # a name of its own per backend, free of words transformers reads (an implementation named "...sdpa..." is
    # held to SDPA's rules)
    name = _NAMES.setdefault(backend.name, f"attnbench-backend-{len(_NAMES)}")

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        extras = {
            "window": kwargs.get("sliding_window"),
            "softcap": kwargs.get("softcap"),
            "sinks": kwargs.get("s_aux"),
        }
        extras = {k: v for k, v in extras.items() if v is not None}
        p = dropout if module.training else 0.0
        out = backend(query, key, value, causal=True, dropout_p=p, scale=scaling, **extras)  # (B, Hq, Tq, D)
        return out.transpose(1, 2).contiguous(), None  # (B, Tq, Hq, D)

    tf.AttentionInterface.register(name, attention)
    model.set_attn_implementation(name)
    return model


def loss_and_grads(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), loss, every parameter's gradient flattened into one vector, 0 where none reached it)."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=tokens, labels=tokens)
    out.loss.backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
    return out.logits.detach(), out.loss.detach(), grads


def parity(backend: Backend, family: str, tokens: torch.Tensor) -> list[tuple[str, float, float]]:
    """[(what, error, bound)] for the logits and the gradients of a float32 `family` model running `backend`: its
    error from the float64 model running the float64 formula, and the bound, twice eager float32's error (the
    flash-attention rule: as far from the truth as twice the library's own attention in the same precision)."""
    device = tokens.device
    truth = use_backend(build(family, torch.float64).to(device), REFERENCE)
    eager = use_backend(build(family, torch.float32).to(device), None)
    model = use_backend(build(family, torch.float32).to(device), backend)
    want, eager_got, got = (loss_and_grads(m, tokens) for m in (truth, eager, model))
    out = []
    for what, i in (("logits", 0), ("grads", 2)):
        err, eager_err = (float((x[i].double() - want[i]).abs().max()) for x in (got, eager_got))
        out.append((what, err, 2 * eager_err))
    return out


def greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` greedy tokens after `prompt` (B, T), with the KV cache: each step a decode call with Tq = 1."""
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=steps, do_sample=False, use_cache=True, pad_token_id=0)[:, -steps:]
