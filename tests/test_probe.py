"""`attnbench probe` names each convention a planted kernel follows, matches the README's findings on the foreign
kernels, and exits 0 / 1 / 2 (follows / departs / bad input)."""

from __future__ import annotations

import math

import attnbench
import pytest
import torch
from attnbench import FEATURES, Backend
from attnbench.bench.cli import main
from attnbench.conformance.probe import native_call, probe
from attnbench.contract import NAN_IN_FUTURE_VALUE
from mutants import no_scale, top_left_causal
from mutants_features import MUTANTS as FEATURE_MUTANTS
from spine_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

ALIGNMENT, WINDOW, SCALE = "causal alignment (Tq < Tk)", "window edge (window=3)", "default scale"
GQA, EMPTY, FLOAT64, LSE = (
    "GQA head mapping",
    "empty rows (a row that sees no key)",
    "dtype computed (float64 given)",
    "LSE base and layout",
)


def _manual(q, k, v, **kw):
    return attnbench.attend(q, k, v, backend="manual", **kw)


def window_excludes_query(q, k, v, *, causal=True, dropout_p=0.0, scale=None, window=None, **kw):
    """The window's keys end just before the query: p - window .. p - 1."""
    if window is None:
        return _manual(q, k, v, causal=causal, scale=scale, **kw)
    return _manual(q, k, v, causal=False, scale=scale, mask_mod=lambda b, h, qi, kv: (kv < qi) & (kv >= qi - window))


def computes_in_float32(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    return _manual(q.float(), k.float(), v.float(), causal=causal, scale=scale).to(q.dtype)


def returns_lse_base2_bth(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """(out, lse) with the log-sum-exp in base 2, laid out (B, Tq, H)."""
    s = q @ k.transpose(-2, -1) * attnbench.default_scale(q, scale)  # (B, H, Tq, Tk), non-causal calls only
    return _manual(q, k, v, causal=causal, scale=scale), (s.logsumexp(-1) / math.log(2)).transpose(1, 2)


def _planted(name, fn, features=()):
    return Backend(name, fn, name, features=features, nan_departure=NAN_IN_FUTURE_VALUE)


FEATURE_FN = {m.name: m.fn for m in FEATURE_MUTANTS}
PLANTED = [  # (backend, the one convention it departs in, what the probe must name)
    (_planted("top_left", top_left_causal), ALIGNMENT, "top-left"),
    (_planted("window_one_extra", FEATURE_FN["window_one_extra"], FEATURES), WINDOW, "4 keys"),
    (_planted("window_one_short", FEATURE_FN["window_one_short"], FEATURES), WINDOW, "2 keys"),
    (
        _planted("window_excludes_query", window_excludes_query, FEATURES),
        WINDOW,
        "3 keys before the query (itself excluded)",
    ),
    (_planted("scale_one", no_scale), SCALE, "1"),
    (_planted("gqa_tiled", FEATURE_FN["gqa_tiled_heads"], FEATURES), GQA, "h % Hkv"),
    (_planted("empty_mean", FEATURE_FN["empty_row_uniform"], FEATURES), EMPTY, "mean(v)"),
    (_planted("empty_nan", FEATURE_FN["empty_row_nan"], FEATURES), EMPTY, "NaN"),
    (_planted("float32_inside", computes_in_float32), FLOAT64, "float32"),
    (_planted("lse_base2", returns_lse_base2_bth), LSE, "base 2, (B, Tq, H)"),
]


@pytest.mark.parametrize(("planted", "convention", "name"), PLANTED, ids=[p[0].name for p in PLANTED])
def test_planted_convention_is_named(planted, convention, name):
    findings = {f.convention: f for f in probe(planted)}
    assert findings[convention].found == name, findings[convention]
    assert [c for c, f in findings.items() if f.status == "DEPARTS"] == [convention]
    assert findings[convention].fix


def test_the_contract_is_followed_everywhere():
    findings = probe(_planted("manual", _manual, FEATURES))
    assert {f.status for f in findings} == {"follows", "declared", "n/a"}
    assert next(f for f in findings if f.convention == LSE).found.startswith("n/a: returns no LSE")


def test_a_match_to_no_candidate_is_unknown_with_the_distances():
    def sees_one_future_key(q, k, v, **kw):  # each row sees its keys and the next one: no candidate alignment
        return _manual(q, k, v, causal=False, mask_mod=lambda b, h, qi, kv: kv <= qi + 1)

    finding = probe(_planted("sees_one_future_key", sees_one_future_key))[0]
    assert finding.found == "unknown" and finding.status == "DEPARTS"
    assert "bottom-right 0." in finding.evidence and "top-left 0." in finding.evidence


FOREIGN = [  # (backend, native, {convention: found}) for each departure; README "What attnbench found" 1, 3, 4, 5
    ("jax_dpa", False, {}),
    ("jax_dpa", True, {ALIGNMENT: "top-left"}),
    ("onnx_attention", False, {}),
    ("onnx_attention", True, {ALIGNMENT: "top-left", FLOAT64: "float32"}),
    ("onnx_mha", False, {}),
    ("onnx_mha", True, {ALIGNMENT: "unknown"}),
]
NAN_FOUND = {"jax_dpa": "spreads a NaN in value", "onnx_attention": "spreads a NaN in key, value"}  # finding 7
NAN_FOUND["onnx_mha"] = NAN_FOUND["onnx_attention"]


@pytest.mark.parametrize(("name", "native", "departs"), FOREIGN, ids=[f"{n}-native={x}" for n, x, _ in FOREIGN])
def test_foreign_kernels_match_the_readme(name, native, departs):
    backend = attnbench.get_backend(name)
    if reason := backend.why_unsupported("cpu", torch.float32):
        pytest.skip(reason)
    findings = {f.convention: f for f in probe(native_call(backend) if native else backend)}
    assert {c: f.found for c, f in findings.items() if f.status == "DEPARTS"} == departs
    nan = findings["NaN in q, key, value"]
    assert (nan.found, nan.status) == (NAN_FOUND[name], "declared")
    if name == "onnx_mha" and native:  # finding 4: the first rows top-left, the last row every key
        assert "keys seen per row [1, 2, 7]" in findings[ALIGNMENT].evidence


@pytest.mark.parametrize(("argv", "code"), [(["manual"], 0), (["top_left_causal_spec"], 1), (["no_such"], 2)])
def test_exit_codes(argv, code, capsys, monkeypatch):
    monkeypatch.setattr("mutants.top_left_causal_spec", top_left_causal, raising=False)
    spec = {"top_left_causal_spec": "mutants:top_left_causal_spec"}.get(argv[0], argv[0])
    assert main(["probe", spec]) == code
    out, err = capsys.readouterr()
    assert ("error:" in err) == (code == 2) and ("DEPARTS" in out) == (code == 1)


def test_native_on_a_backend_without_it_is_bad_input(capsys):
    assert main(["probe", "manual", "--native"]) == 2
    assert "takes no native= argument" in capsys.readouterr().err


def test_an_undeclared_nan_departure_departs_with_its_declaration():
    finding = next(f for f in probe(Backend("undeclared", _manual, "manual")) if f.convention.startswith("NaN"))
    assert (finding.found, finding.status) == ("spreads a NaN in value", "DEPARTS")
    assert "NanDeparture('<why>', spreads={'value'})" in finding.fix
