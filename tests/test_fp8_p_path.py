"""fp8_equivalence admits FlashAttention-3's P path (P = 2^8 exp(s - m) in e4m3, here over 128-key blocks with a
running max, as the kernel computes it) and kills the same path without the 2^8 pre-scale."""

import attnbench
import pytest
import torch
from attnbench import Backend
from attnbench.conformance.fp8 import P_PRESCALE, fp8_examples
from attnbench.conformance.properties import PROPERTIES, run_property
from attnbench.dense import dequantize
from mutants_fp8 import FEATURES, fa3_p_path


def online_fa3(q, k, v, *, causal=True, scale=None, dropout_p=0.0, descale=None):
    """FlashAttention-3's fp8 forward over 128-key blocks: P = 2^8 exp(s - m) against the running max m, cast to e4m3
    for P @ V, the denominator from the unrounded P. q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) e4m3."""
    q, k, v = dequantize(q, k, v, descale)  # float32
    k, v = (t.repeat_interleave(q.size(1) // t.size(1), 1) for t in (k, v))  # (B, Hq, Tk, D)
    s = (q @ k.transpose(-2, -1)) * attnbench.default_scale(q, scale)  # (B, Hq, Tq, Tk)
    if causal:
        tq, tk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq), float("-inf"))
    m = torch.full((*s.shape[:-1], 1), float("-inf"))  # (B, Hq, Tq, 1) running max
    den = torch.zeros_like(m)  # running denominator
    acc = torch.zeros(*q.shape[:-1], v.size(-1))  # (B, Hq, Tq, Dv) running numerator
    for j in range(0, s.size(-1), 128):
        blk = s[..., j : j + 128]  # (B, Hq, Tq, bk)
        m_new = torch.maximum(m, blk.amax(-1, keepdim=True))
        ref = m_new.nan_to_num(neginf=0.0)  # a row that has seen no key yet
        alpha = (m - ref).exp()
        p = (blk - ref).exp() * P_PRESCALE  # (B, Hq, Tq, bk) <= 2^8
        den = den * alpha + p.sum(-1, keepdim=True)
        acc = acc * alpha + p.to(torch.float8_e4m3fn).float() @ v[..., j : j + 128, :]
        m = m_new
    return (acc / den).to(torch.bfloat16)


def test_flash_attention_3_p_path_passes():
    backend = Backend("online_fa3", online_fa3, "FlashAttention-3's fp8 forward, online", features=FEATURES)
    results = run_property(PROPERTIES["fp8_equivalence"], backend, "cpu", [torch.float32], max_examples=20,
                           derandomize=True, deadline=None)  # fmt: skip
    assert len(results) == 20 + len(fp8_examples(torch.float32))


def test_the_attention_sink_example_is_what_kills_a_missing_prescale():
    def no_prescale(q, k, v, *, descale=None, **kw):
        return fa3_p_path(*dequantize(q, k, v, descale), **kw, bug="p_without_prescale")

    backend = Backend("no_prescale", no_prescale, "P without the 2^8 pre-scale", features=FEATURES)
    check = PROPERTIES["fp8_equivalence"].check
    *plain, sink = fp8_examples(torch.float32)
    assert sink.sink and all(check(backend, case, "cpu").ratio < 1 for case in plain)
    with pytest.raises(AssertionError, match="out: "):
        check(backend, sink, "cpu")
