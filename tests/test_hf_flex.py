"""hf_flex, transformers' flex_attention_forward: forward-only on CPU, where each new shape compiles, so the suite
runs it in a step of its own (`pytest tests/conformance --backend hf_flex`); its adapter (the contract's mask as the
BlockMask a model passes, GQA, softcap) is checked here on a few CPU forwards against the float64 masked formula,
and its CPU refusals (backward, float64, sinks) are the ones FlexAttention and transformers raise."""

import attnbench
import pytest
import torch
from attnbench import hf_attention
from attnbench.conformance import hf_models
from attnbench.conformance.features import MASK_MODS
from attnbench.conformance.masked_reference import Features, masked_attention_formula

pytestmark = pytest.mark.skipif(hf_models.missing_transformers() is not None, reason=hf_models.INSTALL)

DOCS = torch.tensor([[0] * 10 + [1] * 20 + [2] * 10, [5] * 25 + [3] * 15])  # (B, Tk) packed documents
CASES = {  # name -> (causal, features)
    "gqa+window+docs+softcap": (True, Features(window=9, softcap=5.0, document_ids=DOCS)),
    "gqa+head mask_mod (non-causal)": (False, Features(mask_mod=MASK_MODS["head_stripes"])),
    "mask_mod with empty rows+docs": (True, Features(mask_mod=MASK_MODS["empty_rows"], document_ids=DOCS)),
}


@pytest.mark.parametrize("name", CASES)
def test_hf_flex_forward_on_cpu_matches_float64(name):
    causal, f = CASES[name]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 24, 16, generator=g)  # (B, Hq, Tq, D), Tq < Tk: bottom-right alignment
    k, v = (torch.randn(2, 2, 40, 16, generator=g) for _ in range(2))  # (B, Hkv, Tk, D)
    with torch.no_grad():
        got = hf_attention._flex(q, k, v, causal=causal, **f.kwargs())
    want = masked_attention_formula(q.double(), k.double(), v.double(), causal=causal, scale=None, f=f)
    assert (got.double() - want).abs().max() < 1e-5, name  # fp32 rounding of <= 40-term sums of O(1) values


def test_hf_flex_refuses_on_cpu_what_flexattention_and_transformers_raise_there():
    backend = attnbench.get_backend("hf_flex")
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))  # (B, H, T, D)
    with pytest.raises(NotImplementedError, match="does not support backward on CPU"):
        hf_attention._flex(q, k, v)
    assert "no backward on CPU" in backend.why_no_backward("cpu")
    with torch.no_grad(), pytest.raises(ValueError, match="sinks cannot be run on CPU"):
        hf_attention._flex(q, k, v, sinks=torch.zeros(2))
    assert "sinks" in backend.why_no_feature("sinks", "cpu")
    assert "not torch.float64" in backend.why_unsupported("cpu", torch.float64)
    assert backend.why_not("cpu", torch.float32, features=("gqa", "softcap", "window")) is None
