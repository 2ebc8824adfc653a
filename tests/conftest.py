"""The repository's own tests: the conformance plugin (pyproject's addopts) plus the mutation kill table."""

from __future__ import annotations

from mutants import KILL_TABLE


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    table = config.stash.get(KILL_TABLE, None)
    if table:
        terminalreporter.write_sep("=", "mutation kill table (x = killed by an assertion, E = crashed, . = survived)")
        terminalreporter.write_line(table)
