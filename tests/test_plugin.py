"""Plug-in conformance: a backend from another package gets the whole suite.

Two ways in: the `attnbench.backends` entry point (tests/plugin_example, installed with
`pip install -e tests/plugin_example`, registers `toy_plugin`), and `pytest --backend package.module:function`.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import backends
import pytest

import kernels

ROOT = Path(__file__).resolve().parents[1]
TOY = "toy_plugin"
INSTALL_HINT = "install the toy plug-in first: python -m pip install -e tests/plugin_example"


def test_entry_point_backend_is_registered():
    eps = {ep.name for ep in importlib.metadata.entry_points(group=kernels.ENTRY_POINT_GROUP)}
    assert TOY in eps, f"no {TOY!r} entry point in group {kernels.ENTRY_POINT_GROUP!r}; {INSTALL_HINT}"
    assert TOY in kernels.backend_names()
    assert kernels.get_backend(TOY).description.startswith("toy plug-in")


def test_entry_point_backend_gets_every_backend_parametrized_test(request):
    if TOY not in {b.name for b in backends.selected_backends()}:
        pytest.skip(f"--backend narrowed the run to {[b.name for b in backends.selected_backends()]}")
    funcs: dict[str, set[str]] = {}
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        if params is not None and isinstance(params.params.get("backend"), kernels.Backend):
            funcs.setdefault(item.nodeid.split("[")[0], set()).add(params.params["backend"].name)
    missing = [f for f, names in funcs.items() if TOY not in names]
    assert not missing, f"{TOY} is not parametrized into {missing}"


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true", PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_entry_point_and_spec_backends_run_the_suite(tmp_path):
    """`--backend toy_plugin,extattn:attention` runs (only) those two, and both pass."""
    (tmp_path / "extattn.py").write_text(
        textwrap.dedent(
            '''
            import torch.nn.functional as F

            def attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
                """ext attention: SDPA with an explicit bottom-right mask."""
                import torch
                tq, tk = q.size(-2), k.size(-2)
                mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq) if causal else None
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
            '''
        )
    )
    junit = tmp_path / "junit.xml"
    proc = _pytest(
        tmp_path,
        "tests/test_equivalence.py",
        "tests/test_causality.py",
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


def test_unknown_backend_is_a_usage_error(tmp_path):
    proc = _pytest(tmp_path, "tests/test_model_parity.py", "--backend", "no_such_backend")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]  # pytest's usage-error exit code
    assert "no_such_backend" in proc.stderr and "manual" in proc.stderr  # names the known backends
