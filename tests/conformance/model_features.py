"""The GPT's attention features (GQA through n_kv_head, a sliding window) as model-level properties.

Registered into properties.PROPERTIES on import (properties.py imports this module last). Each case is a tiny
GPT with n_kv_head < n_head and/or a window; `_restricted` turns off what the backend does not run on the
device, so every backend is held to what it declares (a dense-MHA backend gets the plain GPT), and a
property that needs a feature (Property.features) skips, with the backend's reason, where it is missing.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from attnbench import Backend
from hypothesis import strategies as st

from .backends import set_model_backend
from .properties import (
    PROPERTIES,
    Property,
    _tokens,
    model_causality,
    model_parity,
    tiny_gpt,
)
from .strategies import ModelCase, model_cases

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


def _restricted(mc: ModelCase, backend: Backend, device: str) -> ModelCase:
    """`mc` without the features `backend` does not run on `device`."""
    gqa = mc.n_kv_head not in (None, mc.n_head) and backend.why_no_feature("gqa", device) is None
    window = mc.window is not None and backend.why_no_feature("window", device) is None
    return replace(mc, n_kv_head=mc.n_kv_head if gqa else None, window=mc.window if window else None)


def model_feature_causality(backend: Backend, mc: ModelCase, device: str) -> None:
    """A GQA / windowed GPT: changing tokens after t never changes the logits at positions <= t."""
    return model_causality(backend, _restricted(mc, backend, device), device)


def model_feature_parity(backend: Backend, mc: ModelCase, device: str):
    """A GQA + windowed GPT, one state_dict: logits, loss, grads, AdamW step vs float64 by the rule."""
    return model_parity(backend, _restricted(mc, backend, device), device)


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


# Head size 64, T past 128, MQA with a window: the model-level sizes kernels specialise, in every profile.
KERNEL_SIZED_CASE = ModelCase(n_layer=1, n_head=2, head_size=64, B=1, T=130, t=127, seed=7, n_kv_head=1, window=16)

MODEL_FEATURE_PROPERTIES = (
    Property(
        "model_gqa_window_causal",
        model_feature_causality,
        lambda d: feature_model_cases(),
        "GQA / windowed GPT logits ignore later tokens",
        level="model",
        examples=lambda dtype: [KERNEL_SIZED_CASE],
    ),
    Property(
        "model_gqa_window_parity",
        model_feature_parity,
        lambda d: st.sampled_from(PARITY_CASES),
        "GQA + windowed GPT logits/loss/grads/AdamW step vs float64",
        level="model",
        needs_backward=True,
        features=("gqa", "window"),
        examples=lambda dtype: list(PARITY_CASES),
    ),
    Property(
        "model_window_reach",
        model_window_reach,
        lambda d: reach_cases(),
        "windowed GPT logits ignore tokens out of the window's reach",
        level="model",
        features=("window",),
        examples=lambda dtype: [],  # its cases are built around the reach: drawn only
    ),
)
PROPERTIES.update((p.name, p) for p in MODEL_FEATURE_PROPERTIES)
