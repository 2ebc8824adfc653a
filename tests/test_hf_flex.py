"""hf_flex, transformers' flex_attention_forward: on CPU the suite runs its forward only (no backward, float64 or
sinks there); here its adapter (the contract's mask as the BlockMask a model passes, GQA, softcap) is checked on
fixed mask cases against the float64 masked formula, and its CPU refusals are the measured ones."""

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


def test_hf_flex_on_cpu_is_forward_only_without_float64_or_sinks():
    backend = attnbench.get_backend("hf_flex")
    assert backend.why_unsupported("cpu", torch.float32) is None
    assert "not torch.float64" in backend.why_unsupported("cpu", torch.float64)
    assert "no backward on CPU" in backend.no_backward_reason(torch.device("cpu"))
    assert "sinks" in backend.no_feature_reason("sinks", torch.device("cpu"))
