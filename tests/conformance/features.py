"""Properties of the contract's optional features (GQA, window, mask_mod, document_ids, softcap, value_dim,
score_mod, alibi, sinks, return_lse).

Each is `check(backend, case, device)` over a `FeatureCase` drawn by hypothesis, like properties.py (where they
are registered in PROPERTIES). A case draws any combination of features; `restricted` turns off those the
backend does not run on the device, so the combined properties hold every backend to what it declares, and the
single-feature properties (Property.features) skip, with the backend's reason, where that feature is missing.
A backend with no backward on the device (an inference runtime) has its outputs checked alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
from attnbench import Backend
from hypothesis import strategies as st

from .core import assert_within, conformance_property, has_backward, rule_dtype
from .masked_reference import (
    Features,
    masked_attention_formula,
    masked_attention_with_lse,
    reference_visible,
)
from .reference import RuleResult, abs_logit_bound, check_rule, rounding_noise
from .strategies import MAX_T, Case, cases, grouped_heads

MASK_MODS = {  # named mask_mods on absolute positions, tensor ops only (FlexAttention traces them)
    "causal": lambda b, h, q, kv: kv <= q,
    "prefix_lm": lambda b, h, q, kv: (kv <= q) | (kv < 3),  # a bidirectional prefix, causal after it
    "head_stripes": lambda b, h, q, kv: (kv + h) % 3 != 0,  # depends on the query head
    "batch_shift": lambda b, h, q, kv: ((kv + b + h) % 2 == 0) | (kv == q),  # depends on the batch item and head
    "empty_rows": lambda b, h, q, kv: (q % 3 != 1) & (kv <= q + 2),  # queries at 1, 4, 7, ... see no key
    "local": lambda b, h, q, kv: (q - kv).abs() <= 2,  # a bidirectional band
}
SOFTCAPS = (0.5, 5.0, 30.0)  # 0.5 squashes every logit; 30 is Gemma 2's attention cap
SCORE_MODS = {  # named score_mods (flex's convention), differentiable in the score, tensor ops only
    "softcap_20": lambda s, b, h, q, kv: 20.0 * torch.tanh(s / 20.0),  # softcap as a score_mod
    "relative": lambda s, b, h, q, kv: s + 0.25 * torch.sin(0.3 * (q - kv)),  # reads absolute q_idx and kv_idx
    "per_head": lambda s, b, h, q, kv: s * (1.0 + 0.25 * h) - 0.5 * b,  # reads the query head and batch item
}
VALUE_DIMS = (8, 64, 128)  # Dv != D: 128 is DeepSeek MLA's value head dim (its query/key head dim is 192)


def alibi_slopes(hq: int, device) -> torch.Tensor:
    """ALiBi's geometric slopes 2^(-8 (h + 1) / Hq), (Hq,) float32 (Press et al.; flash-attn takes float32)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / hq) for h in range(hq)], device=device)


MASK_FEATURES = ("window", "mask_mod", "document_ids")
SCORE_FEATURES = ("value_dim", "score_mod", "alibi", "sinks", "return_lse")


@dataclass(frozen=True)
class FeatureCase:
    """An attention problem with optional features: `base` gives q's sizes (H = Hq) and the seed."""

    base: Case
    hkv: int  # key/value heads; base.H % hkv == 0
    window: int | None = None
    mask: str | None = None  # a key of MASK_MODS
    docs: tuple[tuple[int, ...], ...] | None = None  # per batch item, the document id of every key position
    softcap: float | None = None
    row: int = 0  # a query row, for the hidden-key properties
    dv: int | None = None  # the value head dim, when it differs from D
    score: str | None = None  # a key of SCORE_MODS
    alibi: bool = False
    sinks: bool = False
    lse: bool = False  # return and check the lse too
    for_scores: bool = False  # a fixed case of the score features: skipped where the backend runs none of them

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q: (B, Hq, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv)."""
        q = self.base.tensors(device)[0]
        _, k, v = self.base.with_(H=self.hkv, seed=self.base.seed + 1).tensors(device)
        if self.dv is not None:
            v = self.base.with_(H=self.hkv, D=self.dv, seed=self.base.seed + 2).tensors(device)[2]
        return q, k, v

    def upstream(self, device) -> torch.Tensor:
        return self.base.with_(D=self.dv or self.base.D).upstream(device)  # (B, Hq, Tq, Dv)

    def upstream_lse(self, device) -> torch.Tensor:
        return self.base.with_(seed=self.base.seed + 3).upstream(device)[..., 0]  # (B, Hq, Tq)

    def features(self, device) -> Features:
        docs = None if self.docs is None else torch.tensor(self.docs, dtype=torch.long, device=device)  # (B, Tk)
        mask_mod = None if self.mask is None else MASK_MODS[self.mask]
        sinks = None
        if self.sinks:  # gpt-oss's learned sinks are O(1) logits: a row's sink weight is far from 0 and from 1
            g = torch.Generator().manual_seed(self.base.seed + 4)
            sinks = (2.0 * torch.randn(self.base.H, generator=g)).to(self.base.dtype).to(device)  # (Hq,)
        return Features(
            window=self.window,
            mask_mod=mask_mod,
            document_ids=docs,
            softcap=self.softcap,
            score_mod=None if self.score is None else SCORE_MODS[self.score],
            alibi_slopes=alibi_slopes(self.base.H, device) if self.alibi else None,
            sinks=sinks,
        )

    def used(self) -> list[str]:
        on = {"gqa": self.hkv != self.base.H, "window": self.window is not None, "mask_mod": self.mask is not None}
        on |= {"document_ids": self.docs is not None, "softcap": bool(self.softcap), "value_dim": self.dv is not None}
        on |= {"score_mod": self.score is not None, "alibi": self.alibi, "sinks": self.sinks, "return_lse": self.lse}
        return [f for f, yes in on.items() if yes]

    def restricted(self, backend: Backend, device: str) -> FeatureCase:
        """This case without the features `backend` does not run on `device`."""
        off = {f for f in self.used() if backend.why_no_feature(f, device)}
        return replace(
            self,
            hkv=self.base.H if "gqa" in off else self.hkv,
            window=None if "window" in off else self.window,
            mask=None if "mask_mod" in off else self.mask,
            docs=None if "document_ids" in off else self.docs,
            softcap=None if "softcap" in off else self.softcap,
            dv=None if "value_dim" in off else self.dv,
            score=None if "score_mod" in off else self.score,
            alibi=self.alibi and "alibi" not in off,
            sinks=self.sinks and "sinks" not in off,
            lse=self.lse and "return_lse" not in off,
        )

    def visible(self, device) -> torch.Tensor:
        """(B, Hq, Tq, Tk) bool from the reference."""
        b = self.base
        return reference_visible(b.B, b.H, b.Tq, b.Tk, b.causal, self.features(device), device)

    def run(self, backend: Backend, q, k, v, **overrides) -> torch.Tensor:
        """The output of `backend` on this case (its lse is not asked for), its rows that see no key held to what
        the backend declares of them (held_empty_rows)."""
        kwargs = {"causal": self.base.causal, "scale": self.base.scale, **self.features(q.device).kwargs()}
        out = backend(q, k, v, **{**kwargs, **overrides})
        return held_empty_rows(backend, self.with_(window=overrides.get("window", self.window)), out, v)

    def with_(self, **kw) -> FeatureCase:
        return replace(self, **kw)


def held_empty_rows(backend: Backend, case: FeatureCase, out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`out` (B, Hq, Tq, Dv) as the contract sees it. A backend that declares what a row seeing no key comes out
    as (Backend.empty_row_departure: the mean of v over all keys, or NaN) is held to that on those rows, which then
    read as the contract's 0 with no upstream gradient, so the rest of a property judges every other row as usual.
    Without a declaration `out` is returned as is: the contract's 0 is what the property checks."""
    departure = backend.empty_row_departure
    if departure is None:  # the usual case: no reference mask to build on every call
        return out
    empty = ~case.visible(out.device).any(-1)  # (B, Hq, Tq): rows that see no key
    if not empty.any():
        return out
    got = out.detach()[empty].double()  # (n, Dv)
    mean_v = v.detach().double().repeat_interleave(out.size(1) // v.size(1), 1).mean(-2, keepdim=True)  # (B, Hq, 1, Dv)
    mean_v = mean_v.expand(out.shape)[empty]  # (n, Dv)
    tol = rounding_noise(rule_dtype(case.base.dtype), float(v.detach().abs().max()), n_terms=case.base.Tk)
    held = torch.zeros(len(got), dtype=torch.bool, device=got.device)  # (n,): the row is a declared output
    if "nan" in departure.outputs:
        held |= got.isnan().all(-1)
    if "mean_v" in departure.outputs:
        held |= ((got - mean_v).abs() <= tol).all(-1)
    if not held.all():
        i = int((~held).nonzero()[0])
        where = tuple(int(x[i]) for x in empty.nonzero(as_tuple=True))
        raise AssertionError(
            f"row {where} sees no key and came out as {got[i, :4].tolist()}..., which is none of the outputs "
            f"{backend.name} declares ({sorted(departure.outputs)}: mean(v) {mean_v[i, :4].tolist()}...) "
            f"[{backend.name}: {case}]"
        )
    return out.masked_fill(empty[..., None], 0.0)


def _document_ids(draw, batch: int, tk: int, interleaved: bool) -> tuple[tuple[int, ...], ...]:
    """Per batch item: contiguous documents (sorted cut points), or with interleaved=True ids that repeat."""
    out = []
    for _ in range(batch):
        cuts = sorted(draw(st.sets(st.integers(1, max(1, tk - 1)), max_size=3)) if tk > 1 else [])
        ids = [sum(p >= c for c in cuts) for p in range(tk)]
        out.append(tuple(i % 2 for i in ids) if interleaved else tuple(ids))
    return tuple(out)


@st.composite
def feature_cases(draw, dtypes, *, need=(), contiguous_docs: bool = False, **kw) -> FeatureCase:
    """A FeatureCase drawing each feature on or off (those in `need` always on; window needs causal)."""
    if "window" in need:
        kw["causal"] = True
    base, hkv = draw(grouped_heads(draw(cases(dtypes, max_h=1, **kw)), max_t=kw.get("max_t", MAX_T)))
    if "window" in need:
        base = base.with_(causal=True)  # the kernel-sized draws of `cases` pick causality themselves
    if "gqa" in need and base.H == hkv:
        base = base.with_(H=2 * hkv)

    def on(feature):  # each feature on 3 times in 4: combinations are common, and shrinking turns them off
        return feature in need or draw(st.integers(0, 3)) > 0

    window = draw(st.integers(1, base.Tk)) if base.causal and on("window") else None
    mask = draw(st.sampled_from(sorted(MASK_MODS))) if on("mask_mod") else None
    docs = None
    if on("document_ids"):
        docs = _document_ids(draw, base.B, base.Tk, interleaved=not contiguous_docs and draw(st.booleans()))
    softcap = draw(st.sampled_from(SOFTCAPS)) if on("softcap") else None
    row = draw(st.integers(0, base.Tq - 1))
    dv = draw(st.sampled_from([d for d in VALUE_DIMS if d != base.D])) if on("value_dim") else None
    score = draw(st.sampled_from(sorted(SCORE_MODS))) if on("score_mod") else None
    extra = {"alibi": on("alibi"), "sinks": on("sinks"), "lse": on("return_lse")}
    return FeatureCase(base, hkv, window, mask, docs, softcap, row, dv, score, **extra)


def _leaves(*ts):
    return [t.detach().requires_grad_(True) for t in ts]


def _inputs(backend: Backend, device: str, *ts):
    """ts as leaves requiring grad, or as they are for a backend with no backward on `device` (whose properties
    then check the output alone)."""
    return _leaves(*ts) if has_backward(backend, device) else list(ts)


def _context(backend: Backend, device: str, case: FeatureCase) -> str:
    return f"[{backend.name} on {device}: {case}]"


def _magnitudes(case: FeatureCase, q, k, v, dout, dlse, vis) -> dict[str, float]:
    """Sizes of the terms each result sums (see reference.grad_magnitudes), with k/v read per query head and dk,
    dv summed over the query heads of a group; dlse adds P * |dlse| to dS, and dsinks sums P_sink (|Dlt| + |dlse|)
    over the batch and the query rows."""
    b = case.base
    scale = 1.0 / q.size(-1) ** 0.5 if b.scale is None else b.scale
    group = b.H // case.hkv
    q, k, v, dout, dlse = (t.detach().double().abs() for t in (q, k, v, dout, dlse))
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, Hq, Tk, D), (B, Hq, Tk, Dv)
    P = vis.double()  # (B, Hq, Tq, Tk): 0 <= P <= 1 where visible
    ds = P * (2.0 * (dout @ v.transpose(-2, -1)) + dlse[..., None])  # (B, Hq, Tq, Tk)
    per_head_dk = scale * (ds.transpose(-2, -1) @ q)  # (B, Hq, Tk, D)
    per_head_dv = P.transpose(-2, -1) @ dout
    return {
        "out": float(v.max()),
        "dq": scale * float((ds @ k).max()),
        "dk": float(per_head_dk.unflatten(1, (case.hkv, group)).sum(2).max()),
        "dv": float(per_head_dv.unflatten(1, (case.hkv, group)).sum(2).max()),
        "dsinks": float((dout.sum(-1) * v.max() + dlse).sum((0, 2)).max()),
    }


def _check_lse(x, ref, naive, atol, ctx) -> RuleResult:
    """The pass rule for an lse, whose rows that see nothing are -inf in the reference and must be in x."""
    empty = torch.isneginf(ref)  # (B, Hq, Tq)
    if not torch.equal(torch.isneginf(x), empty):
        wrong = (torch.isneginf(x) != empty).nonzero()[0].tolist()
        raise AssertionError(f"lse: -inf where the reference is not, or not -inf where it is, first at {wrong} {ctx}")
    fill = lambda t: t.masked_fill(empty, 0.0)  # noqa: E731
    return check_rule("lse", fill(x), fill(ref), fill(naive.masked_fill(torch.isinf(naive), 0.0)), atol, ctx)


def against_reference(backend, case: FeatureCase, device, got: dict, ins, dout, dlse) -> dict[str, RuleResult]:
    """The pass rule for every tensor in `got` (out, lse, dq, dk, dv, dsinks) against the float64 masked formula.
    ins: q, k, v and, with sinks, the sinks the backend got; dout (B, Hq, Tq, Dv), dlse (B, Hq, Tq) upstream."""
    b, f = case.base, case.features(device)
    names = ["dq", "dk", "dv", "dsinks"][: len(ins)]

    def formula(dtype):
        xs = _leaves(*(t.to(dtype) for t in ins))
        fx = replace(f, sinks=xs[3] if len(xs) > 3 else f.sinks)
        o, lse = masked_attention_with_lse(*xs[:3], causal=b.causal, scale=b.scale, f=fx)
        out = {"out": o.detach(), "lse": lse.detach()}
        if "dq" in got:
            gl = dlse.to(dtype) if "lse" in got else torch.zeros_like(lse)
            out |= dict(zip(names, torch.autograd.grad((o, lse), xs, (dout.to(dtype), gl)), strict=True))
        return out

    refs, naives = formula(torch.float64), formula(rule_dtype(b.dtype))
    q, k = ins[0], ins[1]
    a = abs_logit_bound(q, k.repeat_interleave(b.H // case.hkv, 1), b.scale)
    if f.alibi_slopes is not None:
        a += float(f.alibi_slopes.max()) * b.Tk  # the largest bias, a logit rounded like the others
    upstream_lse = dlse if "lse" in got else torch.zeros_like(dlse)
    mags = _magnitudes(case, q, k, ins[2], dout, upstream_lse, case.visible(device))
    mags["lse"] = 1.0 + float(refs["lse"].nan_to_num(neginf=0.0).abs().max())  # a relative error, and storing it
    group = b.H // case.hkv
    terms = {"out": b.Tk, "lse": b.Tk, "dq": b.Tk, "dk": b.Tq * group, "dv": b.Tq * group, "dsinks": b.B * b.Tq}
    results = {}
    ctx = _context(backend, device, case)
    for name, x in got.items():
        atol = rounding_noise(rule_dtype(b.dtype), mags[name], a, n_terms=terms[name])
        # Pass rule, per tensor: max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d (reference.py).
        rule = _check_lse if name == "lse" else functools.partial(check_rule, name)
        results[name] = rule(x.detach(), refs[name], naives[name], atol, ctx)
    return results


def run_checked(backend: Backend, case: FeatureCase, device: str) -> dict[str, RuleResult]:
    """Run `case` (restricted to what the backend runs) with grads where it has a backward and its lse when the case
    asks, and hold every tensor to the pass rule against the float64 formula."""
    case = case.restricted(backend, device)
    f = case.features(device)
    ins = _inputs(backend, device, *case.tensors(device), *([] if f.sinks is None else [f.sinks]))
    dout, dlse = case.upstream(device), case.upstream_lse(device)
    sinks = ins[3] if len(ins) > 3 else None
    kwargs = {"causal": case.base.causal, "scale": case.base.scale, **replace(f, sinks=sinks).kwargs()}
    if not case.lse:
        got = {"out": backend(*ins[:3], **kwargs)}
    else:
        got = dict(zip(("out", "lse"), backend(*ins[:3], **kwargs, return_lse=True), strict=True))
    got["out"] = held_empty_rows(backend, case, got["out"], ins[2])
    if ins[0].requires_grad:
        upstream = (dout, dlse)[: len(got)]
        grads = torch.autograd.grad(tuple(got.values()), ins, upstream, allow_unused=True)  # a sink may get none
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, ins, strict=True)]
        got |= dict(zip(["dq", "dk", "dv", "dsinks"][: len(ins)], grads, strict=True))
    return against_reference(backend, case, device, got, ins, dout, dlse)


def _worst(results: dict[str, RuleResult]) -> RuleResult:
    return max(results.values(), key=lambda r: r.ratio)


def _two_runs_bound(case: FeatureCase, device, q, k, v) -> float:
    """How far two runs may differ when each is within the pass rule of the float64 formula: twice the rule's
    bound on the output (triangle inequality)."""
    b, f = case.base, case.features(device)
    q, k, v = (t.detach() for t in (q, k, v))
    ref = masked_attention_formula(q.double(), k.double(), v.double(), causal=b.causal, scale=b.scale, f=f)
    d = rule_dtype(b.dtype)
    naive = masked_attention_formula(q.to(d), k.to(d), v.to(d), causal=b.causal, scale=b.scale, f=f)
    a = abs_logit_bound(q, k.repeat_interleave(b.H // case.hkv, 1), b.scale)
    atol = rounding_noise(d, float(v.abs().max()), a, n_terms=b.Tk)
    return 2.0 * (2.0 * float((naive.double() - ref).abs().max()) + atol)


def _cases(**kw):
    return lambda dtypes: feature_cases(dtypes, **kw)


def _with_mask(names, need=(), **kw):
    """Cases whose mask_mod is drawn from `names` (a rule the general draw reaches too rarely to rely on)."""
    need = ("mask_mod", *need)
    return lambda dtypes: st.tuples(feature_cases(dtypes, need=need, **kw), st.sampled_from(names)).map(
        lambda cm: cm[0].with_(mask=cm[1])
    )


def _docs(*lengths: int) -> tuple[int, ...]:
    """Contiguous documents of these lengths, as one batch item's key-position ids."""
    return tuple(i for i, n in enumerate(lengths) for _ in range(n))


def feature_examples(dtype: torch.dtype) -> list[FeatureCase]:
    """Fixed feature cases every profile runs (feature_equiv, hidden_keys): each feature where its bugs live,
    at Tq < Tk (chunked prefill: a mask anchored at the query index instead of the absolute position shows)."""
    base = dict(B=1, dtype=dtype, magnitude=1.0, seed=4321, causal=True, layout="contiguous")
    return [
        FeatureCase(Case(H=4, Tq=33, Tk=129, D=32, **base), hkv=2, window=64, row=32),  # window off by one / anchor
        FeatureCase(  # documents under causal (ANDed, not chosen), a boundary inside the queries
            Case(**{**base, "B": 2}, H=2, Tq=17, Tk=40, D=16), hkv=1, docs=(_docs(13, 14, 13), _docs(30, 10)), row=5
        ),
        FeatureCase(Case(**{**base, "causal": False}, H=2, Tq=9, Tk=30, D=8), hkv=2, mask="local", row=4),  # q_idx
        FeatureCase(Case(**{**base, "causal": False}, H=4, Tq=12, Tk=12, D=8), hkv=2, mask="head_stripes", row=3),
        FeatureCase(Case(H=2, Tq=20, Tk=20, D=16, **base), hkv=2, softcap=5.0, row=10),  # softcap, then the mask
        FeatureCase(Case(H=2, Tq=12, Tk=12, D=8, **base), hkv=1, mask="empty_rows", row=4),  # rows that see nothing
        FeatureCase(Case(H=8, Tq=65, Tk=257, D=64, **base), hkv=2, window=128, softcap=30.0, row=64),  # kernel size
    ]


def score_feature_examples(dtype: torch.dtype) -> list[FeatureCase]:
    """Fixed cases of the score features (feature_equiv): kernel sizes with real models' heads, in chunked prefill
    (Tq < Tk: a bias or score_mod anchored at the query index shows), and an empty row with an lse and a sink."""
    base = dict(B=1, dtype=dtype, magnitude=1.0, seed=4321, causal=True, layout="contiguous")
    cases = [
        FeatureCase(  # gpt-oss: 64 query / 8 key-value heads, D 64, sinks, a 128 window
            Case(H=64, Tq=33, Tk=257, D=64, **base), hkv=8, window=128, sinks=True, lse=True, row=32
        ),
        FeatureCase(Case(H=16, Tq=33, Tk=129, D=192, **base), hkv=16, dv=128, lse=True, row=7),  # DeepSeek MLA
        FeatureCase(Case(H=32, Tq=33, Tk=129, D=128, **base), hkv=32, alibi=True, row=32),  # MPT-7B's ALiBi heads
        FeatureCase(Case(H=16, Tq=33, Tk=129, D=256, **base), hkv=8, score="relative", lse=True, row=0),  # Gemma 2
        FeatureCase(Case(H=2, Tq=12, Tk=12, D=8, **base), hkv=1, mask="empty_rows", lse=True, sinks=True, row=4),
    ]
    return [c.with_(for_scores=True) for c in cases]


def _all_feature_examples(dtype: torch.dtype) -> list[FeatureCase]:
    return feature_examples(dtype) + score_feature_examples(dtype)


def _no_examples(dtype: torch.dtype) -> list:
    return []  # the boundary examples are plain Cases: feature properties without their own are drawn only


# ------------------------------------------------------------------------------------------- properties


@conformance_property(
    "feature_equiv",
    "features",
    _cases(),
    "every feature combination vs float64 by the rule",
    examples=_all_feature_examples,
)
@conformance_property(
    "empty_rows",
    "features",
    _with_mask(["empty_rows"], min_tq=2),
    "a row that sees no key is 0, gradient 0 (vs float64)",
    features=("mask_mod",),
    examples=_no_examples,
)
@conformance_property(
    "mask_mod_heads",
    "features",
    _with_mask(["head_stripes", "batch_shift"], need=("gqa",)),
    "mask_mod gets the query head under GQA (vs float64)",
    features=("mask_mod", "gqa"),
    examples=_no_examples,
)
def feature_equivalence(backend: Backend, case: FeatureCase, device: str) -> RuleResult:
    """Output, lse and grads (q, k, v, sinks) with every combination of the features the backend runs, against
    float64 by the rule."""
    if case.for_scores and not set(case.restricted(backend, device).used()) & set(SCORE_FEATURES):
        return None  # a kernel-size case kept for the score features, and the backend runs none of them
    return _worst(run_checked(backend, case, device))


@conformance_property(
    "gqa_repeat",
    "features",
    _cases(need=("gqa",)),
    "GQA == MHA with k/v repeated",
    features=("gqa",),
    examples=_no_examples,
)
def gqa_is_repeated_mha(backend: Backend, case: FeatureCase, device: str) -> None:
    """GQA equals MHA with each key/value head repeated for its query heads: the output, and dk summed per group."""
    case = case.restricted(backend, device)
    q, k, v = _inputs(backend, device, *case.tensors(device))
    group = case.base.H // case.hkv
    kr, vr = _inputs(backend, device, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))  # (B, Hq, Tk, D)
    dout = case.upstream(device)
    gqa, mha = case.run(backend, q, k, v), case.run(backend, q, kr, vr)
    ctx = _context(backend, device, case)
    assert_within("out (GQA vs repeated MHA)", gqa, mha, _two_runs_bound(case, device, q, k, v), ctx)
    if not q.requires_grad:
        return  # no backward: the output alone
    grads = torch.autograd.grad(gqa, (q, k, v), dout)
    dk_mha = torch.autograd.grad(mha, kr, dout)[0].unflatten(1, (case.hkv, group)).sum(2)  # (B, Hkv, Tk, D)
    got = dict(zip(("out", "dq", "dk", "dv"), (gqa, *grads), strict=True))
    dk_rule = against_reference(backend, case, device, got, (q, k, v), dout, case.upstream_lse(device))["dk"]
    assert_within("dk (GQA vs repeated MHA, summed per group)", grads[1], dk_mha, 2.0 * dk_rule.bound, ctx)


@conformance_property(
    "window_wide",
    "features",
    _cases(need=("window",)),
    "window >= Tk == causal",
    features=("window",),
    examples=_no_examples,
)
def window_covering_is_causal(backend: Backend, case: FeatureCase, device: str) -> None:
    """A window at least as long as the sequence (window >= Tk) is plain causal attention."""
    case = case.restricted(backend, device)
    q, k, v = case.tensors(device)
    wide = case.run(backend, q, k, v, window=case.base.Tk + case.row)
    plain = case.with_(window=None)
    assert_within(
        "out (window >= Tk vs causal)",
        wide,
        plain.run(backend, q, k, v),
        _two_runs_bound(plain, device, q, k, v),
        _context(backend, device, case),
    )


@conformance_property(
    "docs_alone",
    "features",
    _cases(need=("document_ids",), contiguous_docs=True),
    "packed documents == each document alone",
    features=("document_ids",),
    examples=_no_examples,
)
def documents_alone(backend: Backend, case: FeatureCase, device: str) -> None:
    """Packed documents: each document's queries get what running that document on its own gives (mask_mod and
    score_mod off: they read absolute positions and the batch index, which running alone shifts)."""
    case = case.restricted(backend, device).with_(mask=None, score=None)
    q, k, v = case.tensors(device)
    b = case.base
    full = case.run(backend, q, k, v)  # (B, Hq, Tq, D)
    bound = _two_runs_bound(case, device, q, k, v)
    off = b.Tk - b.Tq
    for bi, ids in enumerate(case.docs):
        starts = [0] + [j for j in range(1, b.Tk) if ids[j] != ids[j - 1]]
        for s, e in zip(starts, starts[1:] + [b.Tk], strict=True):
            r0 = max(s, off) - off  # the first query row inside [s, e)
            if r0 >= e - off:
                continue  # no query of this batch item lies in the document
            alone = case.with_(docs=None).run(
                backend, q[bi : bi + 1, :, r0 : e - off], k[bi : bi + 1, :, s:e], v[bi : bi + 1, :, s:e]
            )
            ctx = f"document [{s}, {e}) of batch item {bi} " + _context(backend, device, case)
            assert_within("out (document alone vs packed)", alone, full[bi : bi + 1, :, r0 : e - off], bound, ctx)


@conformance_property(
    "mask_mod_causal",
    "features",
    _cases(),
    "causal mask_mod == causal=True",
    features=("mask_mod",),
    examples=_no_examples,
)
def mask_mod_causal_is_causal(backend: Backend, case: FeatureCase, device: str) -> None:
    """mask_mod = (kv_idx <= q_idx) on absolute positions, without causal=True, is causal=True."""
    case = case.restricted(backend, device).with_(mask=None, window=None)
    q, k, v = case.tensors(device)
    causal = case.with_(base=case.base.with_(causal=True))
    as_mod = case.with_(base=case.base.with_(causal=False), mask="causal").run(backend, q, k, v)
    bound = _two_runs_bound(causal, device, q, k, v)
    assert_within(
        "out (causal mask_mod vs causal=True)",
        as_mod,
        causal.run(backend, q, k, v),
        bound,
        _context(backend, device, case),
    )


@conformance_property(
    "softcap_huge",
    "features",
    _cases(),
    "huge softcap == no softcap",
    features=("softcap",),
    examples=_no_examples,
)
def huge_softcap_is_none(backend: Backend, case: FeatureCase, device: str) -> RuleResult:
    """softcap far above every logit (1e8 * max|logit|) changes nothing: against float64 without a cap."""
    case = case.restricted(backend, device).with_(softcap=None)
    q, k, v = case.tensors(device)
    cap = 1e8 * max(1.0, abs_logit_bound(q, k.repeat_interleave(case.base.H // case.hkv, 1), case.base.scale))
    out = case.run(backend, q, k, v, softcap=cap)  # cap*tanh(s/cap) - s = O(s^3 / cap^2): below float64 eps
    dout, dlse = case.upstream(device), case.upstream_lse(device)
    return _worst(against_reference(backend, case, device, {"out": out}, (q, k, v), dout, dlse))


@conformance_property(
    "hidden_keys",
    "features",
    _cases(),
    "hidden k/v never change a row; grad exactly 0",
    examples=feature_examples,
)
def hidden_keys_never_matter(backend: Backend, case: FeatureCase, device: str) -> None:
    """Causality generalised: keys and values the mask hides from query row r (in every head of its group), and
    other query rows, never change row r's output (exactly), and row r's gradient there is exactly zero."""
    case = case.restricted(backend, device)
    b, r = case.base, case.row
    group = b.H // case.hkv
    q, k, v = case.tensors(device)
    hidden = ~case.visible(device)[:, :, r].unflatten(1, (case.hkv, group)).any(2)  # (B, Hkv, Tk)
    other = case.with_(base=b.with_(seed=b.seed + 12345)).tensors(device)
    q2, k2, v2 = case.tensors(device)
    rows = torch.arange(b.Tq, device=device) != r  # (Tq,)
    q2[:, :, rows] = other[0][:, :, rows]
    k2[hidden], v2[hidden] = other[1][hidden], other[2][hidden]  # (n_hidden, D) rows replaced
    a = case.run(backend, q, k, v)[:, :, r]  # (B, Hq, D)
    c = case.run(backend, q2, k2, v2)[:, :, r]
    ctx = f"row {r}, {int(hidden.sum())} hidden key positions " + _context(backend, device, case)
    if not torch.equal(a, c):
        raise AssertionError(
            f"query row {r} changed when keys/values hidden from it changed: max diff "
            f"{float((a.double() - c.double()).abs().max()):.3e} {ctx}"
        )
    if not has_backward(backend, device):
        return  # no backward: the output alone
    ql, kl, vl = _leaves(q, k, v)
    out = case.run(backend, ql, kl, vl)[:, :, r]  # (B, Hq, D)
    dq, dk, dv = torch.autograd.grad(out, (ql, kl, vl), case.upstream(device)[:, :, r], allow_unused=True)
    for name, g, where in (("dq", dq, (slice(None), slice(None), rows)), ("dk", dk, hidden), ("dv", dv, hidden)):
        leak = torch.zeros(0) if g is None else g[where]
        if leak.numel() and (leak != 0).any():
            raise AssertionError(
                f"{name} of row {r} is not zero where hidden (max |.| {float(leak.abs().max()):.3e}) {ctx}"
            )
