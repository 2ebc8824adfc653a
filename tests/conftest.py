"""pytest options and hypothesis profiles for the attnbench test suite.

--backend NAME_OR_SPEC   narrow the run to registered backends, or cover a `package.module:function` too
                         (repeatable or comma-separated; `all` = every registered backend; see tests/backends.py)
--hypothesis-profile P   ci (derandomized; the default when the CI environment variable is set),
                         dev (the default otherwise), thorough (>= 500 examples per property);
                         the HYPOTHESIS_PROFILE environment variable also picks one
"""

from __future__ import annotations

import os

import backends
from hypothesis import HealthCheck, settings

# Deadlines are off: the machines are shared and noisy, and a slow example is not a wrong one.
_common = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors],
)
settings.register_profile("ci", max_examples=50, derandomize=True, **_common)  # reproducible: same examples every run
settings.register_profile("dev", max_examples=50, **_common)  # random: new examples every run
settings.register_profile("thorough", max_examples=500, **_common)  # before a release, or after touching a kernel
# HYPOTHESIS_PROFILE (tox passes it through) or CI pick the default; --hypothesis-profile overrides both.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        metavar="NAME_OR_SPEC",
        help="attention backends to test: registered names and/or package.module:function specs "
        "(repeatable or comma-separated; 'all' = every registered backend). Default: all registered.",
    )


def pytest_configure(config):
    backends.configure(config.getoption("--backend"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    table = getattr(config, "_attnbench_kill_table", None)
    if table:
        terminalreporter.write_sep("=", "mutation kill table (x = killed by an assertion, E = crashed, . = survived)")
        terminalreporter.write_line(table)
