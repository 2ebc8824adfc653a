"""The cheap oracles are exact where they claim to be, catch a planted difference and pass correct backends.

Row-sampled reference (reference.row_sampled_attention, used by `equivalence`) and the metamorphic relations
(attnbench.conformance.metamorphic): for each, a backend with one planted difference fails it and the real
`manual` and `chunked` backends pass it, on the same kernel-size case. The NaN contract excuses exactly the
departure a backend declares (NanDeparture), no other.
"""

from __future__ import annotations

import dataclasses

import attnbench
import pytest
import torch
from attnbench import Backend, NanDeparture, get_backend
from attnbench.conformance import metamorphic
from attnbench.conformance import nan_contract as nan_contract_module
from attnbench.conformance.equivalence import equivalence
from attnbench.conformance.features import FeatureCase
from attnbench.conformance.nan_contract import nan_contract, nan_violations
from attnbench.conformance.properties import PROPERTIES, run_property
from attnbench.conformance.reference import attention_formula, keep_rows_, row_sampled_attention, sample_rows
from attnbench.conformance.strategies import MAX_T, Case, toy_sizes_only
from mutants import softmax_over_queries, top_left_causal
from mutants_features import MUTANTS as FEATURE_MUTANTS
from mutants_kernel_scale import nondeterministic_dq
from mutants_online_softmax import drops_tail_block

CORRECT = ["manual", "chunked"]
TILE_CASE = Case(B=1, H=2, Tq=129, Tk=129, D=64, dtype=torch.float32, causal=True, magnitude=1.0,
                 layout="bthd", seed=3)  # fmt: skip


def _planted(name, fn) -> Backend:
    return Backend(f"planted:{name}", fn, "a correct backend with one planted difference")


def _manual(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return attnbench.get_backend("manual").fn(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


class _WrongKeyGrad(torch.autograd.Function):
    """manual's output; its dk is off for one key (key 100), nothing else."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        ctx.save_for_backward(q, k, v)
        ctx.causal, ctx.scale = causal, scale
        return _manual(q, k, v, causal=causal, scale=scale)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
        with torch.enable_grad():
            dq, dk, dv = torch.autograd.grad(_manual(q, k, v, causal=ctx.causal, scale=ctx.scale), (q, k, v), dout)
        dk = dk.clone()
        dk[..., 100, :] += 1e-3 * dk.abs().max()
        return dq, dk, dv, None, None


def test_row_sampled_reference_is_exact_on_its_rows():
    """Out on the kept rows, and dq, dk, dv for an upstream gradient kept on those rows, equal the full
    float64 computation (causal, Tq < Tk, non-contiguous dO)."""
    case = TILE_CASE.with_(Tq=100, Tk=257, dtype=torch.float64)
    q, k, v = case.tensors()
    rows = sample_rows(case.Tq, case.seed)
    assert 63 in rows.tolist() and 64 in rows.tolist() and len(rows) < case.Tq  # tile rows first, a sample
    dout = keep_rows_(case.upstream(), rows)
    assert not dout.is_contiguous()  # the layout survives the zeroing
    xs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    full = attention_formula(*xs, causal=True)
    grads = torch.autograd.grad(full, xs, dout)
    got = row_sampled_attention(q, k, v, dout, rows, causal=True, scale=None, dtype=torch.float64)
    torch.testing.assert_close(got[0], full.detach()[..., rows, :], rtol=0, atol=1e-12)
    for g, want in zip(got[1:], grads, strict=True):
        torch.testing.assert_close(g, want, rtol=0, atol=1e-12)


def test_row_sampled_reference_catches_one_wrong_tile_row():
    def wrong_row_64(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        out = _manual(q, k, v, causal=causal, scale=scale).clone()
        out[..., 64, :] += 1e-3  # the first row of the second 64-row tile
        return out

    with pytest.raises(AssertionError, match="out:"):
        equivalence(_planted("row 64", wrong_row_64), TILE_CASE, "cpu")


def test_row_sampled_reference_catches_one_wrong_key_gradient():
    def wrong_dk(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        return _WrongKeyGrad.apply(q, k, v, causal, scale)

    with pytest.raises(AssertionError, match="dk:"):
        equivalence(_planted("dk key 100", wrong_dk), TILE_CASE, "cpu")


@pytest.mark.parametrize("name", CORRECT)
def test_row_sampled_reference_passes_correct_backends(name):
    for case in (TILE_CASE, TILE_CASE.with_(Tq=1, Tk=1025), TILE_CASE.with_(Tq=65, Tk=1024, causal=False)):
        equivalence(attnbench.get_backend(name), case, "cpu")


def _only_decode_unscaled(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """Right except for Tq = 1, where it forgets the scale (a separate decode path)."""
    return _manual(q, k, v, causal=causal, scale=1.0 if q.size(-2) == 1 and scale is None else scale)


RELATIONS = [  # (relation, planted backend fn, case where the plant shows)
    (metamorphic.chunked_prefill, top_left_causal, TILE_CASE.with_(Tq=129, Tk=300)),
    (metamorphic.decode_chain, _only_decode_unscaled, TILE_CASE),
    (metamorphic.key_shift, softmax_over_queries, TILE_CASE.with_(causal=False)),
    (metamorphic.kv_permutation, drops_tail_block, TILE_CASE.with_(Tk=130, causal=False)),
]


@pytest.mark.parametrize(("relation", "plant", "case"), RELATIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_metamorphic_relation_catches_a_planted_difference(relation, plant, case):
    with pytest.raises(AssertionError):
        relation(_planted(plant.__name__, plant), case, "cpu")


@pytest.mark.parametrize("name", CORRECT)
@pytest.mark.parametrize(("relation", "plant", "case"), RELATIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_metamorphic_relation_passes_correct_backends(relation, plant, case, name):
    relation(attnbench.get_backend(name), case, "cpu")


def test_toy_sizes_only_draws_no_kernel_size_and_runs_no_fixed_example():
    """Inside toy_sizes_only, every draw stays within the toy bounds and run_property skips the fixed examples."""
    seen = []
    check = PROPERTIES["equivalence"]
    spy = dataclasses.replace(check, check=lambda backend, case, device: seen.append(case))
    with toy_sizes_only():
        run_property(spy, get_backend("manual"), "cpu", [torch.float32], max_examples=60, derandomize=True)
    assert len(seen) == 60 and max(max(c.Tq, c.Tk) for c in seen) <= MAX_T
    seen.clear()
    run_property(spy, get_backend("manual"), "cpu", [torch.float32], max_examples=60, derandomize=True)
    assert max(c.Tk for c in seen) > MAX_T  # outside it, the fixed examples and kernel-sized draws come back


# ------------------------------------------------------------------------------ the NaN contract's declarations


def _hides_nan_in_q(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """manual, except that a query row holding a NaN comes out as zeros (a NaN silently hidden)."""
    out = _manual(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)
    return torch.where(torch.isnan(q).any(dim=-1, keepdim=True), torch.zeros_like(out), out)


NAN_CASE = Case(B=1, H=2, Tq=8, Tk=8, D=8, dtype=torch.float32, causal=True, magnitude=1.0,
                layout="contiguous", seed=0)  # fmt: skip


def test_a_declared_nan_departure_excuses_that_departure_only():
    # Pass criterion: manual's declared spread of a future value is excused; a backend declaring the same spread
    # but hiding a NaN in q fails (the old blanket excuse passed it); declaring the hiding too excuses it.
    spread = attnbench.get_backend("manual").nan_departure
    nan_contract(attnbench.get_backend("manual"), NAN_CASE, "cpu")
    hides = Backend("planted:hides_nan_in_q", _hides_nan_in_q, "hides a NaN in q", nan_departure=spread)
    with pytest.raises(AssertionError, match="came out finite.*NaN in q"):
        nan_contract(hides, NAN_CASE, "cpu")
    both = NanDeparture("spreads a future value, hides q", spreads={"value"}, hides={"q"})
    nan_contract(dataclasses.replace(hides, nan_departure=both), NAN_CASE, "cpu")
    assert {(v.kind, v.where) for v in nan_violations(hides, NAN_CASE, "cpu")} == {
        ("hides", "q"),
        ("spreads", "value"),
    }


def _leaks_into_rows_before(rows_back: int):
    """manual, except that each output row that is non-finite also poisons the `rows_back` rows stored before it
    (rows_back = 1: the oneDNN AMX bfloat16 matmul leak that nan_contract.py describes). It computes in float32,
    so that this machine's own bfloat16 matmul adds no leak of its own."""

    def attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        out = _manual(q.float(), k.float(), v.float(), causal=causal, dropout_p=dropout_p, scale=scale).to(q.dtype)
        bad = (~torch.isfinite(out)).flatten(0, 2).any(dim=-1)  # (B * H * Tq,) in memory order
        poisoned = bad.clone()
        for back in range(1, rows_back + 1):
            poisoned[:-back] |= bad[back:]
        return out.masked_fill(poisoned.view(out.shape[:-1])[..., None], float("nan"))

    return Backend(f"planted:leaks_{rows_back}_back", attention, "leaks a NaN row backwards",
                   nan_departure=attnbench.get_backend("manual").nan_departure)  # fmt: skip


@pytest.mark.parametrize("machine_leaks", [False, True])
def test_the_machines_bf16_matmul_leak_is_excused_exactly(monkeypatch, machine_leaks):
    # Pass criterion: a leak of a NaN row into the one row stored before it fails the contract, unless the case is
    # bfloat16 on a machine whose own bf16 matmul leaks that way (the probe, planted here both ways); a leak two
    # rows back fails everywhere; a float32 case is never excused.
    probe = nan_contract_module.matmul_leaks_nan_into_previous_row
    monkeypatch.setattr(nan_contract_module, "matmul_leaks_nan_into_previous_row",
                        lambda dtype, device: machine_leaks and dtype == torch.bfloat16)  # fmt: skip
    bf16 = dataclasses.replace(NAN_CASE, Tq=17, Tk=17, dtype=torch.bfloat16)
    one_back, two_back = _leaks_into_rows_before(1), _leaks_into_rows_before(2)
    if machine_leaks:
        nan_contract(one_back, bf16, "cpu")
    else:
        with pytest.raises(AssertionError, match="reached a row that cannot see it"):
            nan_contract(one_back, bf16, "cpu")
    for backend, case in ((two_back, bf16), (one_back, dataclasses.replace(bf16, dtype=torch.float32))):
        with pytest.raises(AssertionError, match="reached a row that cannot see it"):
            nan_contract(backend, case, "cpu")
    assert not probe(torch.float32, "cpu")  # the probe itself: only bfloat16 on the CPU can leak


def test_a_nan_departure_is_declared_structurally():
    with pytest.raises(TypeError, match="NanDeparture"):
        Backend("planted:sentence", _manual, "a sentence for a declaration", nan_departure="spreads NaN")
    with pytest.raises(ValueError, match="unknown inputs"):
        NanDeparture("a typo", spreads={"values"})
    with pytest.raises(ValueError, match="names the inputs"):
        NanDeparture("excuses nothing")


# ---------------------------------------------------------------------------- forward-only backends (no backward)


@pytest.mark.parametrize("prop", ["equivalence", "single_token", "huge_logits"])
def test_forward_only_backends_get_the_output_checks(prop):
    # Pass criterion: a backend without a backward runs these properties on its output (they used to skip it):
    # a forward-only manual passes; forward-only top_left_causal (wrong rows at Tq < Tk) fails equivalence.
    forward_only = "an inference runtime (planted)"
    right = Backend("planted:forward_only", _manual, "manual, declared forward-only", no_backward_reason=forward_only)
    case = TILE_CASE.with_(Tq=1) if prop == "single_token" else TILE_CASE
    PROPERTIES[prop].check(right, case, "cpu")
    if prop == "equivalence":
        wrong = dataclasses.replace(right, name="planted:forward_only_top_left", fn=top_left_causal)
        with pytest.raises(AssertionError):
            PROPERTIES[prop].check(wrong, TILE_CASE.with_(Tq=65, Tk=129), "cpu")


@pytest.mark.parametrize("prop", ["feature_equiv", "gqa_repeat"])
def test_forward_only_backends_get_the_feature_output_checks(prop):
    # Pass criterion: a forward-only backend that declares GQA has its GQA output checked (the feature properties
    # used to skip every forward-only backend): forward-only manual passes, forward-only gqa_tiled_heads fails.
    forward_only = "an inference runtime (planted)"
    right = Backend("planted:forward_only_gqa", attnbench.get_backend("manual").fn, "manual, forward-only",
                    features={"gqa"}, no_backward_reason=forward_only)  # fmt: skip
    tiled = next(m for m in FEATURE_MUTANTS if m.name == "gqa_tiled_heads")
    wrong = dataclasses.replace(right, name="planted:forward_only_gqa_tiled_heads", fn=tiled.fn)
    case = FeatureCase(TILE_CASE.with_(H=4, Tq=65, Tk=129), hkv=2)
    PROPERTIES[prop].check(right, case, "cpu")
    with pytest.raises(AssertionError):
        PROPERTIES[prop].check(wrong, case, "cpu")


def test_a_declared_nondeterministic_backend_is_held_to_rounding():
    # Pass criterion: dq that differs by one ulp between identical calls fails `deterministic` undeclared and
    # passes it declared nondeterministic (the declared branch, held to two runs' rounding noise).
    undeclared = Backend("planted:atomic_dq", nondeterministic_dq, "dq with atomic adds")
    with pytest.raises(AssertionError, match="not bit-identical"):
        PROPERTIES["deterministic"].check(undeclared, TILE_CASE, "cpu")
    declared = Backend("planted:atomic_dq_declared", nondeterministic_dq, "dq with atomic adds", nondeterministic=True)
    PROPERTIES["deterministic"].check(declared, TILE_CASE, "cpu")


def test_the_nan_contract_poisons_a_copy_laid_out_as_the_input():
    # A contiguous copy of a strided input takes another matmul kernel, whose rounding differs: the contract then
    # saw "the NaN changed a row that cannot see it" in manual (found by the dev profile on a 2-core AMD CPU).
    from attnbench.conformance.nan_contract import _poisoned, nan_violations
    from attnbench.conformance.strategies import Case

    case = Case(1, 2, 11, 11, 31, torch.float32, causal=True, magnitude=10.0, layout="strided", seed=0)
    k = case.tensors()[1]
    assert _poisoned(k, -1).stride() == k.stride() and not k.is_contiguous()
    seen = {(v.kind, v.where) for v in nan_violations(attnbench.get_backend("manual"), case, "cpu")}
    assert seen == {("spreads", "value")}  # manual's declared departure, and nothing else
