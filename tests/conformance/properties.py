"""The named properties every backend must have: plain functions that raise AssertionError.

Each property is `check(backend, case, device)` plus the hypothesis strategy its cases come from. The normal
tests (test_equivalence, test_causality, test_properties, test_model_parity) and the mutation kill test run
these same definitions, so "killed by property P" means "P as the suite runs it".
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from attnbench import Backend
from attnbench.gpt.model import GPT, GPTConfig
from hypothesis import example, given, settings
from hypothesis import strategies as st

from .backends import (
    backend_params,
    candidate_dtypes,
    device_params,
    set_model_backend,
    supported_dtypes,
)
from .core import (
    PROPERTIES,
    Property,
    boundary_examples,
    example_dtype,
    has_backward,
    judging,
    missing_feature,
    register,
    rule_dtype,
)
from .features import FEATURE_PROPERTIES, FIXED_EXAMPLES
from .lse_merge import LSE_PROPERTIES
from .masked_reference import Features, masked_attention_formula
from .nan_contract import nan_contract
from .reference import (
    RuleResult,
    abs_logit_bound,
    attention_formula,
    check_rule,
    grad_magnitudes,
    keep_rows_,
    reference_weights,
    rounding_noise,
    row_sampled_attention,
    sample_rows,
    visible_mask,
)
from .strategies import (
    HUGE_MAGNITUDES,
    MODEL_BOUNDARY,
    Case,
    ModelCase,
    cases,
    causal_cut_cases,
    kernel_sizes_enabled,
    model_cases,
    with_cut,
)

FLOATS = (torch.float32, torch.float64)  # dtypes where a statistical or exact property is meaningful


def run_property(prop: Property, backend: Backend, device: str, dtypes, **overrides) -> list[RuleResult]:
    """Run `prop` under hypothesis (current profile, plus `overrides`), its fixed examples first; return the
    RuleResults it produced (no fixed examples under strategies.toy_sizes_only). The mutation kill test uses
    this; the suite's tests carry their own @given."""
    results: list[RuleResult] = []

    def run(case):
        with judging(backend):
            r = prop.check(backend, case, device)
        if r is not None:
            results.append(r)

    run = given(case=prop.strategy(list(dtypes)))(run)
    for case in reversed(prop.examples(example_dtype(dtypes)) if kernel_sizes_enabled() else []):
        run = example(case=case)(run)
    settings(**overrides)(run)()
    return results


# ----------------------------------------------------------------------------------------------- helpers


def _leaf(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """A leaf requiring grad; without a dtype it is t itself (a view keeps its strides, non-contiguous or not)."""
    if dtype is None or dtype == t.dtype:
        return t.detach().requires_grad_(True)
    return t.detach().to(dtype).requires_grad_(True)


def forward_bound(case: Case, q, k, v) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ref64 output, naive_d output and atol_d for the forward of this case (inputs q, k, v)."""
    ref = attention_formula(q.double(), k.double(), v.double(), causal=case.causal, scale=case.scale)
    d = rule_dtype(case.dtype)
    naive = attention_formula(q.to(d), k.to(d), v.to(d), causal=case.causal, scale=case.scale)
    a = abs_logit_bound(q, k, case.scale)
    atol = rounding_noise(d, float(v.abs().max()), a, n_terms=case.Tk)
    return ref, naive, atol


def _worst(results: list[RuleResult]) -> RuleResult:
    return max(results, key=lambda r: r.ratio)


# ------------------------------------------------------------------------------------------- op level


def equivalence(backend: Backend, case: Case, device: str) -> RuleResult:
    """Output and grads wrt q, k, v against float64 by the pass rule, on sampled query rows.

    The row-sampled reference (reference.row_sampled_attention): the exact float64 output on a few query rows
    (tile-boundary rows first), and exact gradients for a random upstream gradient, laid out like q, that is
    nonzero on those rows only; dq is then checked on every row and dk, dv on every key. For Tq <= 16 every
    row is kept: the full reference. A backend with no backward on `device` has its output checked alone."""
    with_grads = has_backward(backend, device)
    q, k, v = (_leaf(t) if with_grads else t for t in case.tensors(device))
    rows = sample_rows(case.Tq, case.seed)
    dout = keep_rows_(case.upstream(device), rows)
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    grads = torch.autograd.grad(out, (q, k, v), dout) if with_grads else ()
    kw = dict(causal=case.causal, scale=case.scale)
    refs = row_sampled_attention(q, k, v, dout, rows, dtype=torch.float64, **kw)
    naives = row_sampled_attention(q, k, v, dout, rows, dtype=rule_dtype(case.dtype), **kw)
    q_rows, dout_rows = q[..., rows, :], dout[..., rows, :]
    a = abs_logit_bound(q_rows, k, case.scale)
    vis = visible_mask(case.Tq, case.Tk, case.causal, device)[rows.to(device)]
    mags = grad_magnitudes(q_rows, k, v, dout_rows, scale=case.scale, visible=vis)
    ctx = f"[{backend.name} on {device}: {case}; sampled rows {rows.tolist()}]"
    results = []
    checked = [("out", out.detach()[..., rows.to(device), :], case.Tk)]
    if with_grads:
        checked += [("dq", grads[0], case.Tk), ("dk", grads[1], len(rows)), ("dv", grads[2], len(rows))]
    # Pass rule, per tensor: max|x - ref64| <= 2 * max|naive_d - ref64| + atol_d (reference.py).
    for i, (name, x, n) in enumerate(checked):
        atol = rounding_noise(rule_dtype(case.dtype), mags[name], a, n_terms=n)
        results.append(check_rule(name, x, refs[i], naives[i], atol, ctx))
    return _worst(results)


def explicit_scale(backend: Backend, case: Case, device: str) -> RuleResult:
    """An explicit `scale` (not 1/sqrt(D)) is what the softmax uses: forward against float64 by the rule."""
    q, k, v = case.tensors(device)
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    ref, naive, atol = forward_bound(case, q, k, v)
    # Pass rule: max|out - ref64| <= 2 * max|naive_d - ref64| + atol_d
    return check_rule("out", out, ref, naive, atol, f"[{backend.name} on {device}: {case}]")


def single_token(backend: Backend, case: Case, device: str) -> RuleResult:
    """Tq = 1 (decoding one token against Tk >= 1 keys, Tk = 1 included): equivalence holds there too."""
    return equivalence(backend, case, device)


def causal_future_invariance(backend: Backend, case: Case, device: str) -> None:
    """Changing q/k/v at absolute positions > t never changes the outputs of queries at positions <= t."""
    q, k, v = case.tensors(device)
    other = case.with_(seed=case.seed + 12345).tensors(device)
    rows = case.t - (case.Tk - case.Tq) + 1  # queries at absolute positions <= t
    q2, k2, v2 = case.tensors(device)  # same values and layout; the future is overwritten in place
    q2[..., rows:, :] = other[0][..., rows:, :]
    k2[..., case.t + 1 :, :] = other[1][..., case.t + 1 :, :]
    v2[..., case.t + 1 :, :] = other[2][..., case.t + 1 :, :]
    a = backend(q, k, v, causal=True, scale=case.scale)[..., :rows, :]
    b = backend(q2, k2, v2, causal=True, scale=case.scale)[..., :rows, :]
    # Exactly equal: masked keys get weight exactly 0, so the future cannot leak in even by one ulp.
    if not torch.equal(a, b):
        diff = (a.double() - b.double()).abs()
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"outputs at positions <= t={case.t} changed when the future changed: max diff {float(diff.max()):.3e} "
            f"at {idx} [{backend.name} on {device}: {case}]"
        )


def causal_grad_zero(backend: Backend, case: Case, device: str) -> None:
    """The gradient of outputs at positions <= t with respect to inputs at positions > t is exactly zero."""
    q, k, v = (_leaf(t) for t in case.tensors(device))
    rows = case.t - (case.Tk - case.Tq) + 1
    out = backend(q, k, v, causal=True, scale=case.scale)[..., :rows, :]  # (B, H, rows, D)
    w = case.with_(seed=case.seed + 1, Tq=rows).upstream(device)  # random weights on the kept outputs
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), w, allow_unused=True)
    for name, g, start in (("dq", dq, rows), ("dk", dk, case.t + 1), ("dv", dv, case.t + 1)):
        future = g[..., start:, :] if g is not None else torch.zeros(0)
        if future.numel() and (future != 0).any():
            raise AssertionError(
                f"{name} at positions after t={case.t} is not zero (max |.| {float(future.abs().max()):.3e}): "
                f"outputs at <= t depend on the future [{backend.name} on {device}: {case}]"
            )


def causal_prefix(backend: Backend, case: Case, device: str) -> None:
    """Running only the prefix (keys 0..t and the queries up to t) gives the prefix of the full run."""
    q, k, v = case.tensors(device)
    rows = case.t - (case.Tk - case.Tq) + 1
    full = backend(q, k, v, causal=True, scale=case.scale)[..., :rows, :]
    pq, pk, pv = q[..., :rows, :], k[..., : case.t + 1, :], v[..., : case.t + 1, :]
    prefix = backend(pq, pk, pv, causal=True, scale=case.scale)
    pcase = case.with_(Tq=rows, Tk=case.t + 1)
    ref, naive, atol = forward_bound(pcase, pq, pk, pv)
    # Each run is within (2 * max|naive_d - ref64| + atol_d) of ref64 by the pass rule, so the two differ by
    # at most twice that (triangle inequality).
    bound = 2.0 * (2.0 * float((naive.double() - ref).abs().max()) + atol)
    err = float((prefix.double() - full.double()).abs().max())
    if not err <= bound:
        raise AssertionError(
            f"prefix run differs from the full run's prefix by {err:.3e} > {bound:.3e} (t={case.t}) "
            f"[{backend.name} on {device}: {case}]"
        )


def convex_combination(backend: Backend, case: Case, device: str) -> None:
    """Each output row is a convex combination of the visible value rows; all-equal values come back as is."""
    q, k, v = case.tensors(device)
    out = backend(q, k, v, causal=case.causal, scale=case.scale).double()  # (B, H, Tq, D)
    lo, hi = visible_value_range(v.double(), case)  # (B, H, Tq, D) each
    atol = rounding_noise(
        rule_dtype(case.dtype), float(v.abs().max()), abs_logit_bound(q, k, case.scale), n_terms=case.Tk
    )
    outside = (out < lo - atol) | (out > hi + atol) | ~torch.isfinite(out)
    if outside.any():
        idx = tuple(int(i[0]) for i in torch.nonzero(outside, as_tuple=True))
        raise AssertionError(
            f"output {float(out[idx]):.6e} at {idx} is outside the visible values' range "
            f"[{float(lo[idx]):.6e}, {float(hi[idx]):.6e}] (+-{atol:.2e}) [{backend.name} on {device}: {case}]"
        )
    c = v[..., :1, :].expand_as(v).contiguous()  # every key carries the same value row
    same = backend(q, k, c, causal=case.causal, scale=case.scale).double()
    err = float((same - c.double()[..., :1, :]).abs().max()) if torch.isfinite(same).all() else float("inf")
    if not err <= atol:
        raise AssertionError(
            f"all-equal values not returned: max error {err:.3e} > {atol:.3e} [{backend.name} on {device}: {case}]"
        )


def visible_value_range(v64: torch.Tensor, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest visible value per query row and feature: (B, H, Tq, D) each. Causal rows see a key
    prefix, so a running min/max over keys answers in O(Tk D), never materializing (Tq, Tk, D)."""
    if case.causal:
        off = case.Tk - case.Tq  # query i sees keys 0 .. off + i
        return v64.cummin(dim=-2).values[..., off:, :], v64.cummax(dim=-2).values[..., off:, :]
    shape = (*v64.shape[:2], case.Tq, v64.size(-1))
    return v64.amin(dim=-2, keepdim=True).expand(shape), v64.amax(dim=-2, keepdim=True).expand(shape)


def permutation_equivariance(backend: Backend, case: Case, device: str) -> None:
    """Batch items and heads are independent: permuting them in the input permutes the output."""
    q, k, v = case.tensors(device)
    g = torch.Generator().manual_seed(case.seed)
    pb, ph = torch.randperm(case.B, generator=g), torch.randperm(case.H, generator=g)

    def perm(t):
        return t[pb.to(t.device)][:, ph.to(t.device)]

    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    out_p = backend(perm(q), perm(k), perm(v), causal=case.causal, scale=case.scale)
    ref, naive, atol = forward_bound(case, q, k, v)
    bound = 2.0 * (2.0 * float((naive.double() - ref).abs().max()) + atol)  # two runs, each within the rule
    err = float((out_p.double() - perm(out).double()).abs().max())
    if not err <= bound:
        raise AssertionError(
            f"permuting batch {pb.tolist()} / heads {ph.tolist()} did not permute the output: "
            f"max diff {err:.3e} > {bound:.3e} [{backend.name} on {device}: {case}]"
        )


DROPOUT_COPIES = 512  # independent dropout draws of one small problem, stacked along the batch


def dropout_expected_value(backend: Backend, case: Case, device: str) -> None:
    """With dropout_p = p in training, E[out] is the no-dropout output (and dropout does change it)."""
    p = (0.1, 0.5)[case.seed % 2]
    q, k, v = (t.repeat(DROPOUT_COPIES, 1, 1, 1) for t in case.tensors(device))  # (N, H, T, D), N draws
    torch.manual_seed(case.seed)
    out = backend(q, k, v, causal=case.causal, dropout_p=p, scale=case.scale).double()
    mean = out.mean(dim=0)  # (H, Tq, D)
    q1, k1, v1 = (t[:1].double() for t in (q, k, v))
    P = reference_weights(q1, k1, causal=case.causal, scale=case.scale)[0]  # (H, Tq, Tk)
    ref = (P @ v1[0]).double()  # (H, Tq, D)
    # out_d = sum_j P_j m_j v_jd / (1 - p), m_j ~ Bernoulli(1 - p): Var = sum_j P_j^2 v_jd^2 p / (1 - p).
    var = (P**2) @ (v1[0] ** 2) * (p / (1 - p))  # (H, Tq, D)
    se = (var / DROPOUT_COPIES).sqrt()
    a1 = abs_logit_bound(q1, k1, case.scale)
    atol = rounding_noise(rule_dtype(case.dtype), float(v1.abs().max()), a1, n_terms=case.Tk)
    z = 6.0  # a 6-sigma band: a false alarm once in ~5e8 elements, a real bias of a few percent is caught
    bad = (mean - ref).abs() > z * se + atol
    if bad.any():
        idx = tuple(int(i[0]) for i in torch.nonzero(bad, as_tuple=True))
        raise AssertionError(
            f"dropout p={p}: mean over {DROPOUT_COPIES} draws {float(mean[idx]):.5f} != expected "
            f"{float(ref[idx]):.5f} (+- {z} * se {float(se[idx]):.2e}) at {idx} [{backend.name} on {device}: {case}]"
        )
    if torch.equal(out, out[:1].expand_as(out)):
        raise AssertionError(f"dropout p={p} changed nothing: every draw identical [{backend.name} on {device}]")


def dropout_off_when_zero(backend: Backend, case: Case, device: str) -> None:
    """dropout_p = 0 (eval) is deterministic: two calls with different RNG states agree bit for bit."""
    q, k, v = case.tensors(device)
    torch.manual_seed(case.seed)
    a = backend(q, k, v, causal=case.causal, dropout_p=0.0, scale=case.scale)
    torch.manual_seed(case.seed + 1)
    b = backend(q, k, v, causal=case.causal, dropout_p=0.0, scale=case.scale)
    if not torch.equal(a, b):
        raise AssertionError(f"dropout_p=0 gave two different outputs [{backend.name} on {device}: {case}]")


def no_nan_huge_logits(backend: Backend, case: Case, device: str) -> None:
    """Logits of 1e4 .. 1e6: output and grads stay finite and the output within the visible values (the output
    alone where the backend has no backward on `device`)."""
    with_grads = has_backward(backend, device)
    q, k, v = (_leaf(t) if with_grads else t for t in case.tensors(device))
    out = backend(q, k, v, causal=case.causal, scale=case.scale)
    grads = torch.autograd.grad(out, (q, k, v), case.upstream(device)) if with_grads else ()
    for name, t in zip(("out", "dq", "dk", "dv")[: 1 + len(grads)], (out, *grads), strict=True):
        if not torch.isfinite(t).all():
            raise AssertionError(f"{name} has NaN/inf with huge logits [{backend.name} on {device}: {case}]")
    convex_combination(backend, case, device)


# ---------------------------------------------------------------------------------------- model level


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
    return _worst(results)


# ---------------------------------------------------------------------------------------- the catalogue


def _single_token_cases(dtypes):
    return cases(dtypes).map(lambda c: c.with_(Tq=1))


def _huge_cases(dtypes):
    return cases(_no_bf16(dtypes), magnitudes=HUGE_MAGNITUDES)


def _no_bf16(dtypes):
    return [d for d in dtypes if d != torch.bfloat16] or list(dtypes)


def _dropout_cases(dtypes):
    return cases(dtypes, max_t=8, max_b=1, max_h=2, max_d=8, kernel=False)


def _mapped(fn):
    """Fixed examples: the boundary cases, each passed through `fn` (to fit the property's preconditions)."""
    return lambda dtype: [fn(c) for c in boundary_examples(dtype)]


def _huge_examples(dtype):
    return [c.with_(magnitude=HUGE_MAGNITUDES[0]) for c in boundary_examples(_no_bf16([dtype])[0])]


def _model_examples(dtype):
    return [MODEL_BOUNDARY]


register(
    Property(
        "equivalence",
        equivalence,
        lambda d: cases(d),
        "fwd + grads vs float64 by the pass rule",
    ),
    Property(
        "explicit_scale",
        explicit_scale,
        lambda d: cases(d, explicit_scale=True),
        "explicit scale honoured",
        examples=_mapped(lambda c: c.with_(scale=0.37)),
    ),
    Property(
        "single_token",
        single_token,
        _single_token_cases,
        "Tq = 1 against any Tk",
        examples=_mapped(lambda c: c.with_(Tq=1)),
    ),
    Property(
        "causal_future",
        causal_future_invariance,
        causal_cut_cases,
        "future q/k/v never change the past",
        examples=_mapped(with_cut),
    ),
    Property(
        "causal_grad_zero",
        causal_grad_zero,
        causal_cut_cases,
        "d out[<=t] / d in[>t] == 0 exactly",
        needs_backward=True,
        examples=_mapped(with_cut),
    ),
    Property(
        "causal_prefix",
        causal_prefix,
        causal_cut_cases,
        "prefix run == prefix of the full run",
        examples=_mapped(with_cut),
    ),
    Property("convex", convex_combination, lambda d: cases(d), "rows are convex combinations of values"),
    Property("permutation", permutation_equivariance, lambda d: cases(d), "batch/head permutation equivariance"),
    Property(
        "dropout_mean",
        dropout_expected_value,
        _dropout_cases,
        "E[dropout out] = out",
        dtypes=FLOATS,
        uses_dropout=True,
        examples=lambda dtype: [],  # 512 dropout draws per example: toy sizes only
    ),
    Property("dropout_off", dropout_off_when_zero, lambda d: cases(d), "dropout_p = 0 is deterministic"),
    Property(
        "huge_logits",
        no_nan_huge_logits,
        _huge_cases,
        "no NaN with logits up to 1e6",
        examples=_huge_examples,
    ),
    Property(
        "nan_contract",
        nan_contract,
        lambda d: cases(d),
        "a NaN reaches exactly the rows that see it",
        examples=lambda dtype: [],  # a poisoned row per example: drawn sizes only
    ),
    Property(
        "model_causal",
        model_causality,
        lambda d: model_cases(),
        "GPT logits ignore later tokens",
        level="model",
        examples=_model_examples,
    ),
    Property(
        "model_eval",
        model_eval_no_dropout,
        lambda d: model_cases(),
        "GPT in eval mode applies no dropout",
        level="model",
        examples=_model_examples,
    ),
    Property(
        "model_parity",
        model_parity,
        lambda d: st.just(PARITY_CASE),
        "GPT logits/loss/grads/AdamW step vs float64",
        level="model",
        needs_backward=True,
        examples=lambda dtype: [PARITY_KERNEL_CASE],
    ),
)


def _no_examples(dtype: torch.dtype) -> list:
    return []  # the boundary examples are plain Cases: feature properties without their own are drawn only


register(
    *(
        Property(n, check, strat, doc, features=f, examples=FIXED_EXAMPLES.get(n, _no_examples))
        for n, check, strat, doc, f in FEATURE_PROPERTIES
    )
)
register(*(Property(n, check, strat, doc, features=f, examples=ex) for n, check, strat, doc, f, ex in LSE_PROPERTIES))


def property_dtypes(prop: Property, backend: Backend, device: str, record_property=None) -> list[torch.dtype]:
    """The dtypes `prop` runs in on this backend and device; skips (with the backend's reason) where it cannot run.

    With pytest's `record_property`, the junit XML gets backend and property first, so that a skip is counted
    under them too."""
    if record_property is not None:
        record_property("backend", backend.name)
        record_property("property", prop.name)
    if prop.uses_dropout and (reason := backend.why_no_dropout(device)):
        pytest.skip(f"{backend.name} on {device}: {reason}")
    why_no_backward = getattr(backend, "why_no_backward", None)  # forward-only backends declare it
    if prop.needs_backward and why_no_backward is not None and (reason := why_no_backward(device)):
        pytest.skip(f"{backend.name} on {device} has no backward: {reason}")
    if reason := missing_feature(prop, backend, device):
        pytest.skip(f"{backend.name} on {device}: {reason}")
    wanted = [torch.float32] if prop.level == "model" else candidate_dtypes(device)
    if prop.dtypes is not None:
        wanted = [d for d in wanted if d in prop.dtypes]
    return supported_dtypes(backend, device, wanted)


_worst_seen: dict[tuple[str, str, str], RuleResult] = {}  # (property, backend, device) -> worst pass-rule result
_largest: dict[tuple[str, str, str], dict[str, int]] = {}  # (property, backend, device) -> largest T, D, B*H run


def case_sizes(case) -> dict[str, int]:
    """The sizes a case reaches: longest sequence T, head dim D, programs B*H (a GPT: head size, B * heads)."""
    if isinstance(case, ModelCase):
        return {"T": case.T, "D": case.head_size, "BH": case.B * case.n_head}
    case = getattr(case, "base", case)  # a features.FeatureCase carries its sizes in a Case
    return {"T": max(case.Tq, case.Tk), "D": case.D, "BH": case.B * case.H}


def _record(prop: Property, backend: Backend, device: str, case, result, record_property) -> None:
    """Record the largest sizes run and the worst pass-rule result per (property, backend, device); the last
    value recorded under a name is the largest (or worst) so far, which is what the report and verdict read."""
    if record_property is None:
        return
    key = (prop.name, backend.name, device)
    largest = _largest.setdefault(key, {"T": 0, "D": 0, "BH": 0})
    for name, n in case_sizes(case).items():
        if n > largest[name]:
            largest[name] = n
            record_property(f"largest_{name}", n)
    if result is not None and (key not in _worst_seen or result.ratio > _worst_seen[key].ratio):
        _worst_seen[key] = result
        record_property("max_err", result.err)
        record_property("bound", result.bound)


def check_backend(name: str, backend: Backend, device: str, data, record_property=None) -> None:
    """One hypothesis example of property `name` on `backend`: draw a case from `data` (st.data()) and check it.

    Call it from a test decorated with @given(data=st.data()), so that each (property, backend, device) has
    its own example database key and derandomized seed (hypothesis keys parametrized tests by node id)."""
    prop = PROPERTIES[name]
    dtypes = property_dtypes(prop, backend, device, record_property)
    case = data.draw(prop.strategy(dtypes), label="case")
    with judging(backend):
        _record(prop, backend, device, case, prop.check(backend, case, device), record_property)


def check_examples(name: str, backend: Backend, device: str, record_property=None) -> int:
    """Run property `name`'s fixed kernel-size examples (every profile); returns how many ran."""
    prop = PROPERTIES[name]
    fixed = prop.examples(example_dtype(property_dtypes(prop, backend, device, record_property)))
    if not fixed:
        pytest.skip(f"{name} has no fixed examples (its cost grows with the size: drawn toy sizes only)")
    for case in fixed:
        with judging(backend):
            _record(prop, backend, device, case, prop.check(backend, case, device), record_property)
    return len(fixed)


from . import contract, determinism, global_state, metamorphic, serving  # noqa: E402,F401  (registers)


def property_tests(names: list[str]):
    """The two tests of a group of properties, each parametrized by property, backend and device:

    drawn: @given(data=st.data()), one example database key and derandomized seed per (property, backend,
           device); a failure prints the shrunk Case and the @reproduce_failure line to replay it;
    fixed: the property's fixed kernel-size examples (tile boundaries, real head dims, many programs).
    """
    grid = [
        pytest.mark.parametrize("device", device_params()),
        pytest.mark.parametrize("backend", backend_params()),
        pytest.mark.parametrize("prop", names),
    ]

    @given(data=st.data())
    def drawn(prop, backend, device, data, record_property):
        check_backend(prop, backend, device, data, record_property)

    def fixed(prop, backend, device, record_property):
        check_examples(prop, backend, device, record_property)

    for mark in grid:
        drawn, fixed = mark(drawn), mark(fixed)
    return drawn, fixed
