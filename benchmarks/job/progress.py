"""pytest plugin of the main job: a stage's progress as JSON lines (the test count, then one line per test done).

Loaded with `-p attnbench.bench.job.progress --attnbench-progress=PATH`; `attnbench run` reads the file for its
progress bar, so nothing depends on the wording of pytest's own output.
"""

from __future__ import annotations

import json


def pytest_addoption(parser):
    parser.addoption("--attnbench-progress", default=None, metavar="PATH", help="write progress as JSON lines")


PATH: str | None = None  # the progress file of this pytest process (--attnbench-progress)


def pytest_configure(config):
    global PATH
    PATH = config.getoption("attnbench_progress")


def _write(record: dict) -> None:
    if PATH:
        with open(PATH, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_collection_finish(session):
    _write({"total": len(session.items)})


def pytest_runtest_logreport(report):
    """One line per test: when its call ran, or when its setup skipped or failed it."""
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _write({"test": report.nodeid.rpartition("::")[2], "outcome": report.outcome})
