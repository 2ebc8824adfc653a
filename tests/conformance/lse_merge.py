"""The LSE-merge oracle: attention over the keys split into shards, merged by the shards' lse, is the unsplit call.

For one query row and shards s of its keys, out_s = sum_{j in s} exp(x_j - lse_s) v_j with lse_s = log sum_{j in s}
exp(x_j), so exactly
    lse = logsumexp_s lse_s,    out = sum_s exp(lse_s - lse) out_s,
forward and backward: what split-KV decoding, ring attention and context parallelism compute. A shard a row sees
nothing of has lse_s = -inf and weight 0; a row that sees nothing in any shard is 0 with lse -inf.

Each shard is a call of its own on the shard's keys (each shard at least Tq long, as the contract needs Tq <= Tk).
Masks on absolute positions become a mask_mod shifted to the shard (the shard's q_idx counts from Tk_s - Tq, its
kv_idx from its first key), so a backend that declares mask_mod is checked under causal and local masks whose
shards some rows cannot see at all; without mask_mod the case is unmasked. Sinks are off (a sink belongs to the
whole row, added once after a merge), and so are ALiBi and score_mod (they read positions too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from attnbench import Backend
from hypothesis import strategies as st

from .core import conformance_property, has_backward
from .features import MASK_MODS, FeatureCase, against_reference, feature_cases
from .reference import RuleResult
from .strategies import Case

MERGE_MASKS = (None, "causal", "local", "empty_rows")  # local: the late queries see nothing of the early shards


@dataclass(frozen=True)
class MergeCase:
    """A feature case (its causal flag off: masks come as mask_mod) and where its keys are cut into shards."""

    case: FeatureCase
    cuts: tuple[int, ...]  # the first key of every shard but the first, increasing

    @property
    def base(self) -> Case:
        return self.case.base

    def shards(self) -> list[tuple[int, int]]:
        edges = (0, *self.cuts, self.base.Tk)
        return list(zip(edges, edges[1:], strict=False))


def merge_by_lse(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shards' outputs (B, Hq, Tq, Dv) and lses (B, Hq, Tq) -> the merged (out, lse), in the lses' dtype. The shift
    m is any constant per row (detached: it cancels); rows empty in every shard stay 0 with lse -inf, and no NaN
    reaches their gradient."""
    lse_s = torch.stack(lses)  # (S, B, Hq, Tq)
    m = lse_s.amax(0)  # (B, Hq, Tq)
    empty = torch.isneginf(m)
    m = m.masked_fill(empty, 0.0).detach()
    w = torch.exp(lse_s - m)  # (S, B, Hq, Tq); 0 for a shard the row does not see
    # (B, Hq, Tq): >= 1 where the row sees a key (its largest shard's w is 1); 1 for an empty row. Not clamp_min(1):
    # a total of exactly 1.0 (the other shards' w below float32's epsilon) sits on the clamp's edge, where torch
    # 2.14 passes no gradient (2.13 did), and dq came out wrong
    total = w.sum(0).masked_fill(empty, 1.0)
    out = (w[..., None] * torch.stack(outs).to(w.dtype)).sum(0) / total[..., None]  # (B, Hq, Tq, Dv)
    return out, (m + total.log()).masked_fill(empty, float("-inf"))


def _shard_mask(mask_mod, tk: int, s: int, e: int):
    """mask_mod on absolute positions, as the call on keys [s, e) must be given it."""
    shift = tk - (e - s)  # the shard's query positions are Tk_s - Tq + i, the whole call's Tk - Tq + i
    return lambda b, h, q, kv: mask_mod(b, h, q + shift, kv + s)


@st.composite
def merge_cases(draw, dtypes) -> MergeCase:
    """A case with Tk >= 2 Tq cut into 2 to 4 shards of at least Tq keys each, masked (when drawn) by a mask_mod."""
    fc = draw(feature_cases(dtypes, need=("return_lse",)))
    base = fc.base.with_(causal=False, Tq=max(1, min(fc.base.Tq, fc.base.Tk // 2)), Tk=max(2, fc.base.Tk))
    mask = draw(st.sampled_from(MERGE_MASKS))
    fc = fc.with_(base=base, window=None, docs=None, score=None, alibi=False, sinks=False, mask=mask)
    fc = fc.with_(row=min(fc.row, base.Tq - 1))
    n = draw(st.integers(2, min(4, base.Tk // base.Tq)))
    spare = base.Tk - n * base.Tq  # keys beyond Tq per shard, handed out at random
    extra = sorted(draw(st.lists(st.integers(0, spare), min_size=n - 1, max_size=n - 1)))
    return MergeCase(fc, tuple(base.Tq * (i + 1) + x for i, x in enumerate(extra)))


def merge_examples(dtype: torch.dtype) -> list[MergeCase]:
    """Kernel-size merges every profile runs: split-KV decode (Llama 3 8B's 32 query / 8 key-value heads, D 128)
    with a causal mask, and a chunked-prefill row block under a local mask whose early shards the late rows cannot
    see (-inf shards), with DeepSeek MLA's head dims (D 192, Dv 128)."""
    base = dict(B=1, dtype=dtype, magnitude=1.0, seed=2468, causal=False, layout="contiguous")
    return [
        MergeCase(FeatureCase(Case(H=32, Tq=1, Tk=1025, D=128, **base), hkv=8, mask="causal", lse=True), (256, 640)),
        MergeCase(
            FeatureCase(Case(H=16, Tq=64, Tk=513, D=192, **base), hkv=16, mask="local", dv=128, lse=True, row=3),
            (128, 200, 384),
        ),
    ]


@conformance_property(
    "lse_merge",
    "features",
    merge_cases,
    "keys split in shards, merged by lse == the unsplit call (fwd, lse, grads) vs float64",
    features=("return_lse",),
    examples=merge_examples,
)
def lse_merge_oracle(backend: Backend, mc: MergeCase, device: str) -> RuleResult:
    """Split the keys into shards, run each with return_lse, merge by lse: the merged output, lse and grads (dq
    summed over the shards, dk and dv concatenated) meet the unsplit problem's pass rule against float64."""
    case = mc.case.restricted(backend, device)
    b = case.base
    ins = [t.detach().requires_grad_(has_backward(backend, device)) for t in case.tensors(device)]
    q, k, v = ins
    kwargs = {"causal": False, "scale": b.scale} | ({} if case.softcap is None else {"softcap": case.softcap})
    outs, lses = [], []
    for s, e in mc.shards():
        mask = {} if case.mask is None else {"mask_mod": _shard_mask(MASK_MODS[case.mask], b.Tk, s, e)}
        o, lse = backend(q, k[:, :, s:e], v[:, :, s:e], **kwargs, **mask, return_lse=True)
        outs.append(o)
        lses.append(lse)
    out, lse = merge_by_lse(outs, lses)
    got = {"out": out, "lse": lse}
    dout, dlse = case.upstream(device), case.upstream_lse(device)
    if q.requires_grad:
        grads = torch.autograd.grad((out, lse), ins, (dout.to(out.dtype), dlse.to(lse.dtype)))
        got |= dict(zip(("dq", "dk", "dv"), grads, strict=True))
    results = against_reference(backend, case, device, got, ins, dout, dlse)
    return max(results.values(), key=lambda r: r.ratio)
