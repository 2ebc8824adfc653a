"""Properties of the GPT running the backend: causality, eval mode, parity of one training step with float64, and
the GPT's attention features (GQA through n_kv_head, a sliding window).

Each case is a tiny GPT; for the feature properties `_restricted` turns off what the backend does not run on the
device, so every backend is held to what it declares (a dense-MHA backend gets the plain GPT), and a property that
needs a feature (Property.features) skips, with the backend's reason, where it is missing.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import torch
from attnbench import Backend
from attnbench.gpt.model import GPT, GPTConfig
from hypothesis import strategies as st

from .backends import set_model_backend
from .core import conformance_property, worst
from .masked_reference import Features, masked_attention_formula
from .reference import RuleResult, attention_formula, check_rule, rounding_noise
from .strategies import MODEL_BOUNDARY, ModelCase, model_cases


def tiny_gpt(mc: ModelCase, dropout: float = 0.0) -> GPT:
    torch.manual_seed(mc.seed)
    cfg = GPTConfig(
        block_size=max(16, mc.T),
        vocab_size=11,
        n_layer=mc.n_layer,
        n_head=mc.n_head,
        n_embd=mc.n_head * mc.head_size,
        n_kv_head=mc.n_kv_head,
        window=mc.window,
        dropout=dropout,
        backend="manual",
    )
    return GPT(cfg)


def _tokens(mc: ModelCase, seed_offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(mc.seed + seed_offset)
    return torch.randint(0, 11, (mc.B, mc.T), generator=g)  # (B, T)


@conformance_property(
    "model_causal",
    "causality",
    lambda d: model_cases(),
    "GPT logits ignore later tokens",
    level="model",
    examples=lambda dtype: [MODEL_BOUNDARY],
)
def model_causality(backend: Backend, mc: ModelCase, device: str) -> None:
    """GPT: changing tokens after t never changes the logits at positions <= t."""
    model = set_model_backend(tiny_gpt(mc).to(device).eval(), backend)
    idx = _tokens(mc).to(device)
    idx2 = idx.clone()
    idx2[:, mc.t + 1 :] = _tokens(mc, 1).to(device)[:, mc.t + 1 :]
    with torch.no_grad():
        a = model(idx)[0][:, : mc.t + 1]  # (B, t + 1, vocab)
        b = model(idx2)[0][:, : mc.t + 1]
    if not torch.equal(a, b):
        raise AssertionError(
            f"GPT logits at positions <= t={mc.t} changed with later tokens: max diff "
            f"{float((a - b).abs().max()):.3e} [{backend.name} on {device}: {mc}]"
        )


@conformance_property(
    "model_eval",
    "structure",
    lambda d: model_cases(),
    "GPT in eval mode applies no dropout",
    level="model",
    examples=lambda dtype: [MODEL_BOUNDARY],
)
def model_eval_no_dropout(backend: Backend, mc: ModelCase, device: str) -> None:
    """GPT with dropout configured, in eval mode: no dropout anywhere, two calls agree bit for bit."""
    model = set_model_backend(tiny_gpt(mc, dropout=0.3).to(device).eval(), backend)
    idx = _tokens(mc).to(device)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(idx)[0]
        torch.manual_seed(2)
        b = model(idx)[0]
    if not torch.equal(a, b):
        raise AssertionError(f"eval-mode GPT is not deterministic: dropout still on [{backend.name} on {device}]")


ADAMW = dict(lr=1e-3, weight_decay=0.1, eps=1e-8)  # one GPT-style AdamW step (eps: PyTorch's default)

PARITY_CASE = ModelCase(n_layer=2, n_head=3, head_size=8, B=2, T=16, t=0, seed=1234)

PARITY_KERNEL_CASE = ModelCase(n_layer=1, n_head=2, head_size=64, B=1, T=130, t=0, seed=4321)  # head 64, T > 128


def _train_step(model: GPT, mc: ModelCase, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Logits, loss, parameter grads and parameters after one AdamW step, float64 copies by name."""
    model = model.to(device=device, dtype=dtype).train()
    idx, targets = _tokens(mc).to(device), _tokens(mc, 7).to(device)
    logits, loss, _ = model(idx, targets)
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach()}
    out.update({f"grad {n}": p.grad.detach().clone() for n, p in model.named_parameters()})
    torch.optim.AdamW(model.parameters(), **ADAMW).step()
    out.update({f"param {n}": p.detach().clone() for n, p in model.named_parameters()})
    return out


def _formula_backend(name: str) -> Backend:
    def fn(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None):
        if window is None and q.size(1) == k.size(1):
            return attention_formula(q, k, v, causal=causal, scale=scale)
        return masked_attention_formula(q, k, v, causal=causal, scale=scale, f=Features(window=window))

    return Backend(name, fn, "the plain formula (masked_reference.py for GQA and window)", features={"gqa", "window"})


@functools.lru_cache(maxsize=4)
def _parity_baseline(mc: ModelCase, device: str) -> tuple[dict, dict]:
    """(ref64, naive fp32) results of one training step on the same GPT and batch."""
    base = tiny_gpt(mc)
    ref = _train_step(set_model_backend(copy.deepcopy(base), _formula_backend("ref64")), mc, device, torch.float64)
    naive = _train_step(set_model_backend(copy.deepcopy(base), _formula_backend("naive")), mc, device, torch.float32)
    return ref, naive


@conformance_property(
    "model_parity",
    "model_parity",
    lambda d: st.just(PARITY_CASE),
    "GPT logits/loss/grads/AdamW step vs float64",
    level="model",
    needs_backward=True,
    examples=lambda dtype: [PARITY_KERNEL_CASE],
)
def model_parity(backend: Backend, mc: ModelCase, device: str) -> RuleResult:
    """One GPT, one state_dict: logits, loss, param grads, params after one AdamW step match float64 by the rule."""
    ref, naive = _parity_baseline(mc, device)
    got = _train_step(set_model_backend(tiny_gpt(mc), backend), mc, device, torch.float32)
    n_embd = mc.n_head * mc.head_size
    ctx = f"[{backend.name} GPT parity: {mc}]"
    results, grad_bounds = [], {}
    for name in ref:
        # Pass rule in the model dtype (float32): max|x - ref64| <= 2 * max|naive_32 - ref64| + atol_32, where
        # atol_32 counts the longest reduction in the model (the MLP's 4 * n_embd inputs).
        atol = rounding_noise(torch.float32, float(ref[name].abs().max()), n_terms=4 * n_embd)
        if name.startswith("param "):
            # AdamW's first step moves p by lr * g / (|g| + eps): an error e in g moves it by up to
            # lr * e * eps / (|g| - e + eps)^2 (capped at 2 lr, a flipped sign). The grads' own rule bound e
            # propagates per element; where |g| is below the grads' noise (e.g. the key bias, whose true
            # gradient is 0 because softmax ignores a per-row constant) the step's sign is noise.
            g, e = ref["grad " + name[6:]].abs(), grad_bounds[name[6:]]
            lr, eps = ADAMW["lr"], ADAMW["eps"]
            step_noise = (lr * e * eps / ((g - e).clamp_min(0) + eps) ** 2).clamp(max=2 * lr)
            atol = atol + step_noise
        r = check_rule(name, got[name], ref[name], naive[name], atol, ctx)
        if name.startswith("grad "):
            grad_bounds[name[5:]] = r.bound
        results.append(r)
    return worst(results)


# One GQA (2 query heads per key/value head) and one MQA GPT, both windowed: the fixed model-parity cases.
PARITY_CASES = (
    ModelCase(n_layer=2, n_head=4, head_size=8, B=2, T=16, t=0, seed=1234, n_kv_head=2, window=5),
    ModelCase(n_layer=2, n_head=3, head_size=8, B=2, T=16, t=0, seed=4321, n_kv_head=1, window=3),
)


@st.composite
def feature_model_cases(draw, max_t: int = 16, windowed: bool = False) -> ModelCase:
    """A tiny GPT case with n_kv_head dividing n_head and a window of 1 .. T + 1 (off too, unless `windowed`)."""
    mc = draw(model_cases(max_t))
    n_head = draw(st.integers(1, 4))
    n_kv_head = draw(st.sampled_from([d for d in range(1, n_head + 1) if n_head % d == 0]))
    windows = st.integers(1, mc.T + 1)
    window = draw(windows if windowed else st.one_of(st.none(), windows))
    return replace(mc, n_head=n_head, n_kv_head=n_kv_head, window=window)


@st.composite
def reach_cases(draw) -> ModelCase:
    """Windowed cases (window <= 4, cut t <= 3, T = 16) where some positions lie out of the tokens' reach."""
    mc = draw(feature_model_cases(windowed=True))
    return replace(mc, T=16, t=draw(st.integers(0, 3)), window=draw(st.integers(1, 4)))


# Head size 64, T past 128, MQA with a window: the model-level sizes kernels specialise, in every profile.
KERNEL_SIZED_CASE = ModelCase(n_layer=1, n_head=2, head_size=64, B=1, T=130, t=127, seed=7, n_kv_head=1, window=16)


def _restricted(mc: ModelCase, backend: Backend, device: str) -> ModelCase:
    """`mc` without the features `backend` does not run on `device`."""
    gqa = mc.n_kv_head not in (None, mc.n_head) and backend.why_no_feature("gqa", device) is None
    window = mc.window is not None and backend.why_no_feature("window", device) is None
    return replace(mc, n_kv_head=mc.n_kv_head if gqa else None, window=mc.window if window else None)


@conformance_property(
    "model_gqa_window_causal",
    "model_features",
    lambda d: feature_model_cases(),
    "GQA / windowed GPT logits ignore later tokens",
    level="model",
    examples=lambda dtype: [KERNEL_SIZED_CASE],
)
def model_feature_causality(backend: Backend, mc: ModelCase, device: str) -> None:
    """A GQA / windowed GPT: changing tokens after t never changes the logits at positions <= t."""
    return model_causality(backend, _restricted(mc, backend, device), device)


@conformance_property(
    "model_gqa_window_parity",
    "model_features",
    lambda d: st.sampled_from(PARITY_CASES),
    "GQA + windowed GPT logits/loss/grads/AdamW step vs float64",
    level="model",
    needs_backward=True,
    features=("gqa", "window"),
    examples=lambda dtype: list(PARITY_CASES),
)
def model_feature_parity(backend: Backend, mc: ModelCase, device: str):
    """A GQA + windowed GPT, one state_dict: logits, loss, grads, AdamW step vs float64 by the rule."""
    return model_parity(backend, _restricted(mc, backend, device), device)


@conformance_property(
    "model_window_reach",
    "model_features",
    lambda d: reach_cases(),
    "windowed GPT logits ignore tokens out of the window's reach",
    level="model",
    features=("window",),
    examples=lambda dtype: [],  # its cases are built around the reach: drawn only
)
def model_window_reach(backend: Backend, mc: ModelCase, device: str) -> None:
    """With window w and L layers, the logits at position p depend on tokens p - L * (w - 1) .. p only: changing
    every token before a cut c never changes the logits at positions >= c + L * (w - 1), exactly."""
    mc = _restricted(mc, backend, device)
    if mc.window is None:
        return  # the backend has no window here (the suite skips first, with its reason)
    model = set_model_backend(tiny_gpt(mc).to(device).eval(), backend)
    cut = mc.t + 1  # tokens 0 .. cut - 1 are replaced
    first_fixed = cut + mc.n_layer * (mc.window - 1)  # the first position that cannot see them
    if first_fixed >= mc.T:
        return  # no position lies out of reach in this sequence
    idx = _tokens(mc).to(device)  # (B, T)
    idx2 = idx.clone()
    idx2[:, :cut] = _tokens(mc, 1).to(device)[:, :cut]
    with torch.no_grad():
        a = model(idx)[0][:, first_fixed:]  # (B, T - first_fixed, vocab)
        b = model(idx2)[0][:, first_fixed:]
    if not torch.equal(a, b):
        raise AssertionError(
            f"GPT logits at positions >= {first_fixed} changed with the tokens before {cut}, out of the window's "
            f"reach ({mc.n_layer} layers x window {mc.window}): max diff {float((a - b).abs().max()):.3e} "
            f"[{backend.name} on {device}: {mc}]"
        )
