"""Every declared conformance property runs: its family's test module collects it, with no list to forget."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from attnbench.conformance import core
from attnbench.conformance.properties import PROPERTIES

CONFORMANCE = Path(core.__file__).parent


def test_every_declared_property_is_collected_by_the_suite():
    # Pass criterion: collecting the shipped suite for one backend yields a test for each property in PROPERTIES.
    pytest = [sys.executable, "-m", "pytest", "-c", os.devnull, "-p", "attnbench.conformance.plugin"]
    cmd = [*pytest, "--collect-only", "-q", str(CONFORMANCE), "--backend", "manual"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=CONFORMANCE)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    unrun = [name for name in PROPERTIES if not any(f"-{name}]" in i or f"::test_{name}[" in i for i in ids)]
    assert not unrun, f"declared but collected by no test: {unrun}"


def test_each_family_has_its_test_module():
    assert {p.family for p in PROPERTIES.values()} <= set(core.FAMILIES)
    missing = [f for f in core.FAMILIES if not (CONFORMANCE / f"test_{f}.py").is_file()]
    assert not missing, f"families with no test module (tests/conformance/test_<family>.py): {missing}"


def test_a_property_declared_twice_or_in_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        core.conformance_property("equivalence", "equivalence", None, "again")(lambda b, c, d: None)
    with pytest.raises(ValueError, match="unknown family"):
        core.conformance_property("new_one", "no_such_family", None, "doc")
