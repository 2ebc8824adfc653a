"""fp8 (e4m3) inputs with descales, FlashAttention-3's convention (the contract: attnbench.call), judged by a
bound derived for quantized inputs.

The reference is exact: each e4m3 value times its float32 descale is dequantized in float64 and attention runs in
float64, so the bound covers the kernel's own arithmetic, not the inputs' quantization (the same for any kernel).
The pass rule is the suite's: max|out - ref64| <= 2 * max|naive - ref64| + atol, where `naive` is the coarsest
computation an fp8 kernel is allowed: float32 scores of the dequantized inputs, P = 2^8 exp(s - max) rounded to
e4m3 for P @ V and the denominator summed from the unrounded P (FlashAttention-3's Max_offset 8: up to u = 2^-4
relative per weight, its tail lifted 2^8 above e4m3's subnormals), the output stored in bfloat16; atol is that store
(2^-8 relative) plus float32's rounding noise. A kernel may round P so (the naive's own error on these inputs is what
that costs), but not round the scores, drop or misapply a descale, read another head's, cast P from (0, 1] with no
pre-scale (a diffuse tail below 2^-10 flushes to 0 from the numerator only: the attention-sink example loses about
a third of its mass), or saturate P at 448: tests/mutants_fp8.py, one real bug each, exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from attnbench import Backend
from attnbench.call import FP8
from attnbench.dense import dequantize
from hypothesis import strategies as st

from .core import conformance_property
from .masked_reference import Features, masked_attention_formula
from .reference import RuleResult, abs_logit_bound, check_rule, rounding_noise
from .strategies import Case, cases, grouped_heads

E4M3_MAX = 448.0  # the largest e4m3 value: a tensor's amax maps to it
P_PRESCALE = 2.0**8  # P = 2^8 exp(s - max) before its cast to e4m3 (FlashAttention-3's Max_offset 8)
SINK_GAP = 7.5  # an attention sink's logit above the diffuse tail: exp(-7.5) < 2^-10 flushes without the pre-scale
HEAD_SPREAD = (1.0, 4.0)  # amplitude ratio between successive kv heads: 4 makes every head's descale its own


@dataclass(frozen=True)
class Fp8Case:
    """q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D) drawn in float32 (`base` gives Hq and the sizes, magnitude the std of q
    and k), kv head g's q and v scaled by spread**g and its k by spread**-g, then quantized to e4m3 with descales per
    (batch, kv head) or per tensor."""

    base: Case
    hkv: int
    per_head: bool
    spread: float = 1.0
    sink: bool = False  # key 0 is every query's hot key, SINK_GAP above a diffuse tail; v carries a mean of 1

    def _with_sink(self, q, k, v) -> tuple[torch.Tensor, ...]:
        """q_i = a u + q_i, k_0 = a u (u a unit vector): s_i0 - s_ij ~ a^2 / sqrt(D) = SINK_GAP; v + 1, so the mass a
        kernel drops from the tail shows in the output."""
        d = q.size(-1)
        a = (SINK_GAP * d**0.5) ** 0.5
        u = torch.full((d,), d**-0.5, device=q.device)  # (D,)
        k = k.clone()
        k[:, :, 0] = a * u
        return q + a * u, k, v + 1.0

    def inputs(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        b = self.base
        q = b.tensors(device)[0]  # (B, Hq, Tq, D)
        _, k, v = b.with_(H=self.hkv, seed=b.seed + 1).tensors(device)  # (B, Hkv, Tk, D) each
        if self.sink:
            q, k, v = self._with_sink(q, k, v)
        amplitude = self.spread ** torch.arange(self.hkv, dtype=torch.float32, device=device)  # (Hkv,)
        group = b.H // self.hkv
        # kv head g: q and v scaled by spread**g, k by its inverse: every head's descales differ, its logits do not
        q = q * amplitude.repeat_interleave(group)[:, None, None]
        k, v = k / amplitude[:, None, None], v * amplitude[:, None, None]
        return *(self._quantized(t, group if t is q else 1) for t in (q, k, v)), self._descales(q, k, v, group)

    def _amax(self, t: torch.Tensor, group: int) -> torch.Tensor:
        """() or (B, Hkv): the largest |value| per tensor, or per batch item and kv head (its query heads together)."""
        if not self.per_head:
            return t.abs().amax().clamp_min(1e-30)
        return t.abs().unflatten(1, (-1, group)).amax(dim=(2, 3, 4)).clamp_min(1e-30)  # (B, Hkv)

    def _descales(self, q, k, v, group) -> tuple[torch.Tensor, ...]:
        return tuple(self._amax(t, g) / E4M3_MAX for t, g in ((q, group), (k, 1), (v, 1)))

    def _quantized(self, t: torch.Tensor, group: int) -> torch.Tensor:
        d = self._amax(t, group) / E4M3_MAX
        d = d.reshape(*d.shape, 1, 1).repeat_interleave(group, 1) if d.dim() else d  # (B, H, 1, 1) or ()
        return (t / d).to(FP8)


@st.composite
def fp8_cases(draw, dtypes) -> Fp8Case:
    base, hkv = draw(grouped_heads(draw(cases([torch.float32], max_h=1)), kv_heads=3))
    base = base.with_(magnitude=draw(st.sampled_from([0.5, 2.0, 4.0])))
    return Fp8Case(base, hkv, per_head=draw(st.booleans()), spread=draw(st.sampled_from(HEAD_SPREAD)))


def fp8_examples(dtype) -> list[Fp8Case]:
    """Kernel sizes with real models' heads: Llama-3 8B's 32:8 GQA at D 128 past a 128-key tile, a decode row against
    1025 keys, MQA at D 64; per-head descales differing 4x between kv heads; an attention sink over 1024 keys with a
    diffuse tail (8:2 GQA, D 128)."""
    base = dict(B=1, dtype=torch.float32, magnitude=2.0, seed=4321, causal=True, layout="contiguous")
    return [
        Fp8Case(Case(H=32, Tq=65, Tk=257, D=128, **base), hkv=8, per_head=True, spread=4.0),
        Fp8Case(Case(H=8, Tq=1, Tk=1025, D=128, **base), hkv=2, per_head=True, spread=4.0),
        Fp8Case(Case(**{**base, "causal": False}, H=4, Tq=129, Tk=129, D=64), hkv=1, per_head=False),
        Fp8Case(Case(**{**base, "magnitude": 0.5}, H=8, Tq=64, Tk=1024, D=128), hkv=2, per_head=True, sink=True),
    ]


def _allowed(q64, k64, v64, *, causal: bool, scale) -> torch.Tensor:
    """The coarsest computation the contract allows an fp8 kernel (module docstring): float32 scores, P = 2^8 exp(s -
    max) rounded to e4m3, P @ V in float32 over the unrounded P's sum, the output stored in bfloat16. q (B, Hq, Tq,
    D), k, v (B, Hkv, Tk, D)."""
    q, k, v = (t.float() for t in (q64, k64, v64))
    k, v = (t.repeat_interleave(q.size(1) // t.size(1), 1) for t in (k, v))  # (B, Hq, Tk, D)
    s = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5 if scale is None else scale)  # (B, Hq, Tq, Tk)
    if causal:
        tq, tk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(tq, tk, dtype=torch.bool, device=s.device).tril(tk - tq), float("-inf"))
    p = (s - s.amax(-1, keepdim=True)).exp() * P_PRESCALE  # (B, Hq, Tq, Tk) in (0, 2^8]; every row sees a key
    return ((p.to(FP8).float() @ v) / p.sum(-1, keepdim=True)).to(torch.bfloat16)  # (B, Hq, Tq, D)


@conformance_property(
    "fp8_equivalence",
    "features",
    fp8_cases,
    "fp8 e4m3 inputs with per-tensor or per-head descales vs the float64 dequantized reference",
    features=("fp8",),
    examples=fp8_examples,
)
def fp8_equivalence(backend: Backend, case: Fp8Case, device: str) -> RuleResult:
    b = case.base
    q8, k8, v8, descale = case.inputs(device)
    out = backend(q8, k8, v8, causal=b.causal, scale=b.scale, descale=descale)  # (B, Hq, Tq, D) bfloat16
    q64, k64, v64 = dequantize(q8, k8, v8, descale, torch.float64)  # the exact values the fp8 inputs stand for
    ref = masked_attention_formula(q64, k64, v64, causal=b.causal, scale=b.scale, f=Features())
    naive = _allowed(q64, k64, v64, causal=b.causal, scale=b.scale)
    vmax = float(v64.abs().max())
    a = abs_logit_bound(q64, k64.repeat_interleave(b.H // case.hkv, 1), b.scale)
    atol = torch.finfo(torch.bfloat16).eps / 2 * vmax + rounding_noise(torch.float32, vmax, a, n_terms=b.Tk)
    # Pass rule: max|out - ref64| <= 2 * max|naive - ref64| + atol (naive: P in e4m3, the output in bfloat16)
    return check_rule("out", out, ref, naive, atol, f"[{backend.name} on {device}: {case}]")
