"""Declared departures from the empty-row and compute-dtype conventions (attnbench.EmptyRowDeparture,
attnbench.PrecisionDeparture): undeclared, the one cause fails the properties; declared, they pass and the
departure is reported once as "declared"; a declaration the kernel does not need, or a wrong one, fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import attnbench
import pytest
import torch
from attnbench.conformance.core import judging
from attnbench.conformance.features import FeatureCase
from attnbench.conformance.probe import probe_computed_dtype, probe_empty_rows
from attnbench.conformance.properties import PROPERTIES
from attnbench.conformance.strategies import Case

# A module a user would write: manual's math behind two common departures, declared and not.
CONVENTIONS = '''
import dataclasses
import torch
import attnbench

MASKS = {"gqa", "window", "mask_mod", "document_ids"}


def _manual(q, k, v, **kw):
    return attnbench.attend(q, k, v, backend="manual", **kw)


def mean_v_when_empty(q, k, v, *, causal=True, dropout_p=0.0, scale=None, **masks):
    """manual, but a row that sees no key is mean(v), as a finite additive mask gives."""
    out = _manual(q, k, v, causal=causal, scale=scale, **masks)  # (B, Hq, Tq, Dv)
    visible = attnbench.visible_mask(q, k, causal=causal, **masks)
    if visible is None:
        return out
    mean_v = v.repeat_interleave(q.size(1) // v.size(1), 1).mean(-2, keepdim=True)  # (B, Hq, 1, Dv)
    return torch.where(visible.any(-1, keepdim=True), out, mean_v)


def in_float32(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """manual computed in float32 whatever the input dtype."""
    return _manual(q.float(), k.float(), v.float(), causal=causal, scale=scale).to(q.dtype)


EMPTY = attnbench.EmptyRowDeparture("masks with a finite value: an empty row is mean(v)", outputs={"mean_v"})
FLOAT32 = attnbench.PrecisionDeparture("computes in float32", {torch.float64: torch.float32})
empty_declared = attnbench.Backend("empty_declared", mean_v_when_empty, "mean(v) rows, declared",
                                   features=MASKS, empty_row_departure=EMPTY)
empty_undeclared = attnbench.Backend("empty_undeclared", mean_v_when_empty, "mean(v) rows", features=MASKS)
empty_unneeded = attnbench.Backend("empty_unneeded", _manual, "manual, declaring mean(v) rows",
                                   features=MASKS, empty_row_departure=EMPTY)
float32_declared = attnbench.Backend("float32_declared", in_float32, "float32 inside, declared",
                                     precision_departure=FLOAT32)
float32_undeclared = attnbench.Backend("float32_undeclared", in_float32, "float32 inside")
float32_unneeded = attnbench.Backend("float32_unneeded", _manual, "manual, declaring float32",
                                     precision_departure=FLOAT32)
'''

F64_CASE = Case(B=1, H=2, Tq=33, Tk=65, D=16, dtype=torch.float64, causal=True, magnitude=1.0,
                layout="contiguous", seed=7)  # fmt: skip
EMPTY_CASE = FeatureCase(  # mask "empty_rows": query rows 1, 4, 7, ... see no key
    Case(B=1, H=2, Tq=12, Tk=12, D=8, dtype=torch.float32, causal=False, magnitude=1.0, layout="contiguous", seed=3),
    hkv=1,
    mask="empty_rows",
)


@pytest.fixture(scope="module")
def conventions(tmp_path_factory):
    where = tmp_path_factory.mktemp("conventions")
    (where / "userattn.py").write_text(textwrap.dedent(CONVENTIONS))
    sys.path.insert(0, str(where))
    try:
        import userattn

        yield where, userattn
    finally:
        sys.path.remove(str(where))
        sys.modules.pop("userattn", None)


def _judge(prop: str, backend, case) -> None:
    with judging(backend):
        PROPERTIES[prop].check(backend, case, "cpu")


def test_undeclared_departures_fail_the_properties_and_declared_ones_pass(conventions):
    _, m = conventions
    with pytest.raises(AssertionError, match="out"):  # float32 rounding, judged as float64's
        _judge("equivalence", m.float32_undeclared, F64_CASE)
    _judge("equivalence", m.float32_declared, F64_CASE)  # judged by float32's rounding: passes
    with pytest.raises(AssertionError, match="out"):  # mean(v) where the contract says 0
        _judge("empty_rows", m.empty_undeclared, EMPTY_CASE)
    _judge("empty_rows", m.empty_declared, EMPTY_CASE)  # the empty rows held to mean(v), the rest to float64
    _judge("hidden_keys", m.empty_declared, EMPTY_CASE.with_(row=1))  # an empty row: mean(v) reads hidden keys


def test_a_declared_departure_excuses_that_departure_only(conventions):
    _, m = conventions
    nan_declared = attnbench.Backend(
        "nan_declared",
        m.mean_v_when_empty,
        "mean(v) rows, declared NaN",
        features=m.MASKS,
        empty_row_departure=attnbench.EmptyRowDeparture("NaN", outputs={"nan"}),
    )
    with pytest.raises(AssertionError, match="none of the outputs nan_declared declares"):
        _judge("empty_rows", nan_declared, EMPTY_CASE)

    # declared for float64 only: a float32 input computed in float16 is still judged by float32's rounding
    def in_float16(q, k, v, **kw):
        return m.in_float32(q.half(), k.half(), v.half(), **kw).to(q.dtype)

    wrong = attnbench.Backend("wrong", in_float16, "float16 inside", precision_departure=m.FLOAT32)
    with pytest.raises(AssertionError, match="out"):
        _judge("equivalence", wrong, F64_CASE.with_(dtype=torch.float32))


def test_the_probe_names_the_declaration_or_sees_it(conventions):
    _, m = conventions
    assert probe_empty_rows(m.empty_declared, torch.float32, "cpu").declared
    undeclared = probe_empty_rows(m.empty_undeclared, torch.float32, "cpu")
    assert undeclared.status == "DEPARTS" and "EmptyRowDeparture('<why>', outputs={'mean_v'})" in undeclared.fix
    assert probe_computed_dtype(m.float32_declared, torch.float64, "cpu").status == "declared"
    found = probe_computed_dtype(m.float32_undeclared, torch.float64, "cpu")
    assert found.status == "DEPARTS" and "{torch.float64: torch.float32}" in found.fix


def test_check_reports_each_declared_departure_once_and_fails_unneeded_ones(conventions):
    where, _ = conventions
    specs = [f"userattn:{name}" for name in ("empty_declared", "float32_declared", "empty_unneeded",
                                                 "float32_unneeded", "empty_undeclared")]  # fmt: skip
    env = dict(os.environ, CI="true")
    select = "departure or (empty_rows and not fixed)"
    cmd = [sys.executable, "-m", "attnbench.bench.cli", "check", *specs, "--", "-k", select]
    run = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=600)
    table = run.stdout[run.stdout.rindex("conformance verdict") :]
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-2000:]
    # Pass criterion: one "declared" line per declared departure that is seen; an unneeded declaration fails.
    assert "userattn:empty_declared: PASS  (1 properties passed, 0 failed, 0 skipped, 1 declared" in table
    assert "declared empty_row_convention: userattn:empty_declared (declared; seen: mean_v)" in table
    assert "userattn:float32_declared: PASS" in table
    assert "declared precision_convention: userattn:float32_declared (declared; seen: float64 in float32)" in table
    assert "userattn:empty_unneeded: FAIL" in table and "failed: empty_row_convention" in table
    assert "userattn:float32_unneeded: FAIL" in table and "failed: precision_convention" in table
    # an undeclared departure fails the property, and the probe names the cause and its declaration, before the
    # verdict, which comes last
    assert "userattn:empty_undeclared: FAIL" in table and "failed: empty_rows" in table
    causes = run.stdout[run.stdout.index("likely causes") : run.stdout.rindex("conformance verdict")]
    assert "userattn:empty_undeclared:\n  - empty rows (a row that sees no key): mean(v)" in causes
    assert "empty_row_departure=attnbench.EmptyRowDeparture('<why>', outputs={'mean_v'})" in causes
    assert "empty_declared:" not in causes  # its departure is declared: no cause to name
