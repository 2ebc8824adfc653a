"""The conformance suite's pytest plugin: the --backend option, hypothesis profiles and the verdict table.

Loaded with `-p attnbench.conformance.plugin` (the repository's pytest config and `attnbench check` do it):

--backend NAME_OR_SPEC   narrow the run to registered backends, or cover a `package.module:function` too
                         (repeatable or comma-separated; `all` = every registered backend; see backends.py)
--hypothesis-profile P   ci (derandomized; the default when the CI environment variable is set),
                         dev (the default otherwise), thorough (>= 500 examples per property);
                         the HYPOTHESIS_PROFILE environment variable also picks one

Every test runs with an autouse fixture that restores torch's process-wide state (default dtype, RNG, threads,
deterministic and matmul flags: conformance/global_state.py) after it.

At the end of the run a verdict table shows, per backend and property, how many tests passed, failed or
were skipped (with the skip reasons), from the `backend` and `property` each conformance test records, and
the largest sequence length T, head dim D and number of programs B*H each property ran on.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from . import backends, profiles, properties  # noqa: F401  (declaring the properties, hypothesis profiles)
from .global_state import restore, snapshot

_outcomes: list[dict] = []  # the verdict cells of this pytest process (outcome_of), in the order the tests ran


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


@pytest.fixture(autouse=True)
def restore_global_torch_state():
    """Every test ends with torch's process-wide state (global_state.snapshot) as it began, whatever the backend
    it ran did: one backend's default dtype, seed or thread count never reaches the tests after it."""
    state = snapshot()
    yield
    restore(state)


def outcome_of(report) -> dict | None:
    """The verdict cell a conformance test's report counts for, or None (not a conformance test, or a phase
    that decides nothing): {backend, property, outcome: passed|failed|skipped|declared, reason, largest}.
    "declared": an expected failure, the backend's declared departure seen (the rest of the property held)."""
    props = dict(report.user_properties)
    if "backend" not in props or "property" not in props:
        return None
    if report.when != "call" and not (report.skipped or report.failed):
        return None
    cell = {"backend": props["backend"], "property": props["property"], "reason": None, "largest": {}}
    if hasattr(report, "wasxfail"):
        cell.update(outcome="declared", reason=report.wasxfail)
    elif report.skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else "skipped"
        cell.update(outcome="skipped", reason=reason)
    else:
        cell["outcome"] = "passed" if report.passed else "failed"
    if report.passed:
        cell["largest"] = {n: int(props.get(f"largest_{n}", 0)) for n in ("T", "D", "BH")}
    return cell


def pytest_runtest_logreport(report):
    if (cell := outcome_of(report)) is not None:
        _outcomes.append(cell)


def tally(outcomes: list[dict]) -> tuple[dict, dict]:
    """(verdicts, largest) of verdict cells: (backend, property) -> {passed|failed|skipped|declared: count,
    "reasons": set, "causes": set}, and property -> the largest T, D and B*H it passed on."""
    verdicts: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"passed": 0, "failed": 0, "skipped": 0, "declared": 0, "reasons": set(), "causes": set()}
    )
    largest: dict[str, dict[str, int]] = defaultdict(lambda: {"T": 0, "D": 0, "BH": 0})
    for o in outcomes:
        cell = verdicts[(o["backend"], o["property"])]
        cell[o["outcome"]] += 1
        if o["reason"]:  # a failure's cause (a crash, a hang) apart from the reasons for a skip or a departure
            cell["causes" if o["outcome"] == "failed" else "reasons"].add(o["reason"])
        for name, n in o["largest"].items():
            largest[o["property"]][name] = max(largest[o["property"]][name], n)
    return verdicts, largest


def verdict_table(verdicts: dict) -> list[str]:
    """One line per backend: PASS/FAIL and the properties that failed or were skipped."""
    by_backend: dict[str, dict[str, dict]] = defaultdict(dict)
    for (backend, prop), cell in verdicts.items():
        by_backend[backend][prop] = cell
    lines = []
    for backend, cells in sorted(by_backend.items()):
        failed = sorted(p for p, c in cells.items() if c["failed"])
        passed = sum(1 for c in cells.values() if c["passed"] and not c["failed"])
        declared = {p: c["reasons"] for p, c in cells.items() if c["declared"] and not c["failed"]}
        ran = set(declared) | {p for p, c in cells.items() if c["passed"] or c["failed"]}
        skipped = {p: c["reasons"] for p, c in cells.items() if c["skipped"] and p not in ran}
        verdict = "FAIL" if failed else ("PASS" if passed or declared else "NOT RUN")
        counts = f"{passed} properties passed, {len(failed)} failed, {len(skipped)} skipped"
        counts += f", {len(declared)} declared departures" if declared else ""
        lines.append(f"{backend}: {verdict}  ({counts})")
        if failed:
            lines.append(f"    failed: {', '.join(failed)}")
        for p in failed:  # a cause known without reading the log: a crash, a hang (attnbench check)
            lines += [f"    failed {p}: {cause}" for cause in sorted(cells[p]["causes"])]
        for p, reasons in sorted(declared.items()):
            lines.append(f"    declared {p}: {'; '.join(sorted(reasons))}")
        for p, reasons in sorted(skipped.items()):
            lines.append(f"    skipped {p}: {'; '.join(sorted(reasons))}")
    return lines


def largest_sizes(largest: dict[str, dict[str, int]]) -> list[str]:
    """One line per property that passed somewhere: the largest T, D and B*H it was checked on (a size that
    property does not record, such as a model's head dim, is left out rather than shown as 0)."""
    lines = []
    for p, sizes in sorted(largest.items()):
        if shown := " ".join(f"{'B*H' if n == 'BH' else n}={v}" for n, v in sizes.items() if v):
            lines.append(f"{p}: {shown}")
    return lines


VERDICT_TITLE = "attnbench conformance verdict (per backend)"
SIZES_TITLE = "largest sizes passed, per property (T = longest sequence)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.pluginmanager.hasplugin("attnbench.conformance.supervised"):
        return  # `attnbench check` prints the verdict of all its pytest processes together
    verdicts, largest = tally(_outcomes)
    for sep, title, lines in (  # the verdict last, after the long output
        ("-", SIZES_TITLE, largest_sizes(largest)),
        ("=", VERDICT_TITLE, verdict_table(verdicts)),
    ):
        if lines:
            terminalreporter.write_sep(sep, title)
            for line in lines:
                terminalreporter.write_line(line)
