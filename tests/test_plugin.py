"""Plug-in conformance: a backend from another package gets the whole suite, from any directory.

Two ways in: the `attnbench.backends` entry point (tests/plugin_example, installed with
`pip install -e tests/plugin_example`, registers `toy_plugin`), and a `package.module:function` spec given to
`attnbench check` or `pytest --backend`. The toy plug-in's tests skip, with the install line, where it is not
installed; CI installs it.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import attnbench
import pytest
from attnbench.conformance import backends
from attnbench.conformance.plugin import verdict_table

TOY = "toy_plugin"
needs_toy = pytest.mark.skipif(
    TOY not in {ep.name for ep in importlib.metadata.entry_points(group=attnbench.ENTRY_POINT_GROUP)},
    reason="the toy plug-in is not installed: python -m pip install -e tests/plugin_example",
)
CORRECT = '''
import torch
import torch.nn.functional as F

def attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """ext attention: SDPA with an explicit bottom-right mask."""
    tq, tk = q.size(-2), k.size(-2)
    mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)

def top_left(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """SDPA's own is_causal: aligned top-left when Tq != Tk, which the contract forbids."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, scale=scale)
'''
DTYPE_SETTER = '''
def float64_accumulators(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    """attention right in every call, but sets the process-wide default dtype and leaves it."""
    torch.set_default_dtype(torch.float64)
    return attention(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)
'''


@needs_toy
def test_entry_point_backend_is_registered():
    eps = {ep.name for ep in importlib.metadata.entry_points(group=attnbench.ENTRY_POINT_GROUP)}
    assert TOY in eps, f"no {TOY!r} entry point in group {attnbench.ENTRY_POINT_GROUP!r}"
    assert TOY in attnbench.backend_names()
    assert attnbench.get_backend(TOY).description.startswith("toy plug-in")


@needs_toy
def test_entry_point_backend_gets_every_backend_parametrized_test(request):
    if TOY not in {b.name for b in backends.selected_backends()}:
        pytest.skip(f"--backend narrowed the run to {[b.name for b in backends.selected_backends()]}")
    funcs: dict[str, set[str]] = {}
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        if params is not None and isinstance(params.params.get("backend"), attnbench.Backend):
            funcs.setdefault(item.nodeid.split("[")[0], set()).add(params.params["backend"].name)
    missing = [f for f, names in funcs.items() if TOY not in names]
    assert not missing, f"{TOY} is not parametrized into {missing}"


def _run(cwd, *cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true")
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _check(cwd, *args: str) -> subprocess.CompletedProcess:
    return _run(cwd, sys.executable, "-m", "attnbench.bench.cli", "check", *args)


def test_check_from_outside_the_repository_passes_a_correct_backend_and_fails_a_wrong_one(tmp_path):
    """`attnbench check mod:fn` from a directory that is not the checkout: a verdict table, exit 0 / 1."""
    (tmp_path / "extattn.py").write_text(textwrap.dedent(CORRECT))
    good = _check(tmp_path, "extattn:attention", "--quick", "--", "-k", "cpu")
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    verdict = good.stdout[good.stdout.rindex("conformance verdict") :]  # the last section
    assert "extattn:attention: PASS" in verdict and "failed:" not in verdict and ", 0 failed" in verdict
    bad = _check(tmp_path, "extattn:top_left", "--quick", "--", "-k", "cpu and equivalence")
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-2000:]
    # top-left alignment never sees the future, so causality holds; the float64 reference catches it
    assert "extattn:top_left: FAIL" in bad.stdout and "failed: equivalence" in bad.stdout
    assert not (tmp_path / ".pytest_cache").exists() and not (tmp_path / ".hypothesis").exists()


SINKS = """
import attnbench

def _manual(q, k, v, **kwargs):
    return attnbench.get_backend("manual").fn(q, k, v, **kwargs)

def _sink_without_grad(q, k, v, *, sinks=None, **kwargs):
    return _manual(q, k, v, sinks=None if sinks is None else sinks.detach(), **kwargs)

good = attnbench.Backend("ext sinks", _manual, "manual, declaring sinks and lse", features={"sinks", "return_lse"})
bad = attnbench.Backend("ext no dsink", _sink_without_grad, "sinks, no gradient", features={"sinks", "return_lse"})
"""


def test_check_runs_the_score_feature_properties_a_plugin_declares(tmp_path):
    """A plug-in declaring sinks and return_lse gets feature_equiv (dsink included) and lse_merge, and one whose
    sinks get no gradient fails feature_equiv (on its fixed cases: gpt-oss's heads with sinks)."""
    (tmp_path / "extsinks.py").write_text(textwrap.dedent(SINKS))
    only = ["--", "-k", "cpu and at_fixed_sizes and (feature_equiv or lse_merge)"]  # the kernel-size cases
    good = _check(tmp_path, "extsinks:good", *only)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    assert "extsinks:good: PASS" in good.stdout and "lse_merge:" in good.stdout and "feature_equiv:" in good.stdout
    bad = _check(tmp_path, "extsinks:bad", *only)
    assert bad.returncode == 1 and "failed: feature_equiv" in bad.stdout, bad.stdout[-3000:] + bad.stderr[-2000:]


def test_check_names_an_unknown_backend_in_one_line(tmp_path):
    proc = _check(tmp_path, "no_such_backend")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no_such_backend" in proc.stderr and "manual" in proc.stderr  # names the known backends


@needs_toy
def test_entry_point_and_spec_backends_run_the_suite_the_pytest_way(tmp_path):
    """`pytest --pyargs attnbench.conformance --backend toy_plugin,extattn:attention` runs only those two."""
    (tmp_path / "extattn.py").write_text(textwrap.dedent(CORRECT))
    junit = tmp_path / "junit.xml"
    proc = _run(
        tmp_path,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "attnbench.conformance.plugin",
        "--pyargs",
        "attnbench.conformance.test_equivalence",
        "attnbench.conformance.test_causality",
        "-k",
        "cpu and (equivalence or causal_future)",
        "--backend",
        f"{TOY},extattn:attention",
        f"--junitxml={junit}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    names = [tc.get("name") for tc in ET.parse(junit).iter("testcase")]
    for backend in (TOY, "extattn:attention"):
        assert any(backend in n and "equivalence" in n for n in names), (backend, names)
        assert any(backend in n and "causal_future" in n for n in names), (backend, names)
    assert all(TOY in n or "extattn:attention" in n for n in names), f"--backend did not narrow the run: {names}"


def test_unknown_backend_is_a_usage_error_under_pytest(tmp_path):
    proc = _run(
        tmp_path,
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "attnbench.conformance.plugin",
        "--pyargs",
        "attnbench.conformance.test_model_parity",
        "--backend",
        "no_such_backend",
    )
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]  # pytest's usage-error exit code
    assert "no_such_backend" in proc.stderr and "manual" in proc.stderr  # names the known backends


def test_verdict_table_counts_a_declared_departure_as_run_not_skipped():
    # A backend whose only property ended as an expected failure (its declared departure, seen) ran and held the
    # rest of the property: PASS with the departure named, not "NOT RUN" with it counted as a skip.
    cell = {"passed": 0, "failed": 0, "skipped": 0, "declared": 1, "reasons": {"manual (declared; seen: ...)"}}
    assert verdict_table({("manual", "nan_contract"): cell}) == [
        "manual: PASS  (0 properties passed, 0 failed, 0 skipped, 1 declared departures)",
        "    declared nan_contract: manual (declared; seen: ...)",
    ]


def test_check_fails_a_backend_that_changes_the_default_dtype(tmp_path):
    """A plug-in that sets float64 as the default dtype in every call: FAIL naming global_state, exit 1."""
    (tmp_path / "dtypeattn.py").write_text(textwrap.dedent(CORRECT) + DTYPE_SETTER)
    proc = _check(tmp_path, "dtypeattn:float64_accumulators", "--", "-k", "cpu and global_state")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "dtypeattn:float64_accumulators: FAIL" in proc.stdout and "failed: global_state" in proc.stdout
    assert "default dtype: torch.float32 -> torch.float64" in proc.stdout
