"""The repository's own tests: the conformance plugin (pyproject's addopts) plus the mutation kill table."""

from __future__ import annotations

import json

import pytest
from attnbench import get_backend, triton_flash
from mutants import KILL_ROW, kill_table

_kill_rows: list[dict[str, str]] = []  # one per mutant, from the test reports (complete under pytest-xdist)


def pytest_addoption(parser):
    parser.addoption(
        "--full-kill-table",
        action="store_true",
        help="run every property against every mutant (tests/test_mutation_kill.py), not only the one it names",
    )


def pytest_runtest_logreport(report):
    if report.when == "call":
        _kill_rows.extend(json.loads(v) for k, v in report.user_properties if k == KILL_ROW)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _kill_rows:
        terminalreporter.write_sep(
            "=", "mutation kill table (x = killed, E = error in the mutant, . = survived, - = n/a, blank = not run)"
        )
        terminalreporter.write_line(kill_table(sorted(_kill_rows, key=lambda r: r["order"])))


@pytest.fixture
def triton_interpreter(monkeypatch):
    """TRITON_INTERPRET=1 while the kernels are (re)defined, so they run in numpy on CPU tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_flash._kernels.cache_clear()
    yield get_backend("triton_flash")
    triton_flash._kernels.cache_clear()
