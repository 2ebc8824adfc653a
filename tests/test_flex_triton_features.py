"""flex and triton_flash with the contract's features, on paths the CPU suite cannot run as a whole: flex's
forward (no backward on CPU) and the Triton kernels under TRITON_INTERPRET=1 (numpy-slow: a few small cases)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from attnbench import flex
from attnbench.conformance.features import MASK_MODS, SCORE_MODS, feature_cases
from attnbench.conformance.masked_reference import Features, masked_attention_formula
from attnbench.conformance.properties import PROPERTIES, run_property
from attnbench.conformance.strategies import toy_sizes_only
from hypothesis import Phase
from spine_helpers import needs_triton


def _problem(b=2, hq=4, hkv=2, tq=24, tk=40, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, tq, d, generator=g)
    k, v = (torch.randn(b, hkv, tk, d, generator=g) for _ in range(2))
    docs = torch.tensor([[0] * 10 + [1] * 20 + [2] * 10, [5] * 25 + [3] * 15])  # (B, Tk) packed documents
    return q, k, v, docs


FLEX_CASES = {
    "gqa+window+docs+softcap": dict(causal=True, window=9, softcap=5.0, docs=True),
    "gqa+head mask_mod (non-causal)": dict(causal=False, mask="head_stripes"),
    "batch mask_mod+docs+empty rows": dict(causal=True, mask="empty_rows", docs=True),
    "score_mod on absolute positions+softcap": dict(causal=True, score="relative", softcap=5.0),
    "score_mod per head and batch item": dict(causal=False, score="per_head"),
    "ALiBi per head+softcap+window": dict(causal=True, alibi=(4,), softcap=5.0, window=9),
    "ALiBi per batch item and head+score_mod": dict(causal=False, alibi=(2, 4), score="relative"),
}


@pytest.mark.parametrize("name", FLEX_CASES)
def test_flex_features_forward_on_cpu(name):
    """flex's mask_mod, BlockMask, score_mod (softcap and ALiBi are score_mods too) and enable_gqa against the
    float64 masked formula (fp32), eager: on CPU only the no-grad forward exists, and the compiled CPU forward is
    not trusted with these masks (see the flex module)."""
    spec = FLEX_CASES[name]
    q, k, v, docs = _problem()
    f = Features(
        window=spec.get("window"),
        mask_mod=MASK_MODS.get(spec.get("mask")),
        document_ids=docs if spec.get("docs") else None,
        softcap=spec.get("softcap"),
        score_mod=SCORE_MODS.get(spec.get("score")),
        alibi_slopes=torch.rand(spec["alibi"]) if "alibi" in spec else None,  # slopes in [0, 1)
    )
    with torch.no_grad():
        got = flex.flex_attention_fn(q, k, v, causal=spec["causal"], compiled=False, **f.kwargs())
    want = masked_attention_formula(q.double(), k.double(), v.double(), causal=spec["causal"], scale=None, f=f)
    assert (got.double() - want).abs().max() < 1e-5, name  # fp32 rounding of <= 40-term sums of O(1) values


# --------------------------------------------------------------------------------------------- triton


@needs_triton
@pytest.mark.parametrize("prop", ["feature_equiv", "hidden_keys", "gqa_repeat", "window_wide"])
def test_triton_flash_features_interpreted(triton_interpreter, prop):
    """A few hypothesis examples of the feature properties on the interpreted Triton kernels (fp32), on shapes
    small enough for numpy speed (still several 16-key blocks when T > 16)."""
    need = ("window",) if prop == "window_wide" else ()  # as the property's own strategy draws it
    small = dataclasses.replace(
        PROPERTIES[prop], strategy=lambda d: feature_cases(d, need=need, max_t=20, max_b=1, max_d=8)
    )
    with toy_sizes_only():
        run_property(
            small,
            triton_interpreter,
            "cpu",
            [torch.float32],
            max_examples=4,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
        )
