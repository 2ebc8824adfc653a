"""pytest plugin of `attnbench check`: what the supervising process needs to judge a run it did not see end.

Loaded with `-p attnbench.conformance.supervised --attnbench-check-log=PATH` (benchmarks/check.py does it). Each
record is one JSON line, written with a single unbuffered os.write, so it is on disk even if a backend kills the
process the next instant:

    {"start": nodeid, "backend": name, "property": name}       a test is about to run
    {"call": [B, Hq, Tq, Tk, D, dtype]}                          the backend under test is being called
    {"cell": {"backend", "property", "outcome", "reason", "largest"}}   a test's verdict (plugin.outcome_of)
    {"end": nodeid}                                              a test is over (its teardown ran)
    {"left_out": {backend: n}}                                   tests of backends given up on, not run
    {"finished": exitstatus}                                     the session ended normally

The supervisor reads the log after the process ended (a crash, an exit, a kill) or stalled (a hang), and restarts
pytest with `--attnbench-check-skip=FILE`: the node ids already judged and the backends given up on are deselected.
The verdict table is then printed by the supervisor, over every restart, so this process prints none.
Captured output of a test is capped (CAPTURE_CAP characters per section), so a backend that prints megabytes a
call cannot flood the log.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import pytest

CAPTURE_CAP = 8192  # characters of one captured-output section (stdout or stderr of a test phase) that are kept

_fd: int | None = None  # the check log, opened for appending


def pytest_addoption(parser):
    parser.addoption("--attnbench-check-log", default=None, metavar="PATH", help="the supervisor's log (JSON lines)")
    parser.addoption("--attnbench-check-skip", default=None, metavar="PATH", help="node ids and backends to leave out")


def write(record: dict) -> None:
    if _fd is not None:
        os.write(_fd, (json.dumps(record) + "\n").encode())


def pytest_configure(config):
    global _fd
    path = config.getoption("attnbench_check_log")
    if path:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        config.pluginmanager.set_blocked("attnbench.conformance.plugin.verdict")  # the supervisor prints it


def watched(backend):
    """The backend with its sizes logged before every call: the example a crash or hang happened in."""

    @functools.wraps(backend.fn)
    def fn(q, k, v, **kwargs):
        write({"call": [*q.shape[:2], q.shape[2], k.shape[2], q.shape[3], str(q.dtype).removeprefix("torch.")]})
        return backend.fn(q, k, v, **kwargs)

    return dataclasses.replace(backend, fn=fn)


def identity(item) -> dict:
    """The (backend, property) a test's verdict cell is filed under, known before the test runs."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    backend = params.get("backend")
    prop = params.get("prop")
    return {
        "backend": getattr(backend, "name", backend) if backend is not None else None,
        "property": prop if isinstance(prop, str) else item.originalname,
    }


def pytest_collection_modifyitems(config, items):
    """Leave out what the supervisor already judged; log the backend under test's calls."""
    path = config.getoption("attnbench_check_skip")
    skip = json.loads(open(path).read()) if path else {"nodeids": [], "backends": []}
    done, given_up = set(skip["nodeids"]), set(skip["backends"])
    keep = [it for it in items if it.nodeid not in done and identity(it)["backend"] not in given_up]
    left_out = [identity(it)["backend"] for it in items if it.nodeid not in done and it not in keep]
    write({"left_out": {b: left_out.count(b) for b in set(left_out)}})
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[it for it in items if it not in keep])
        items[:] = keep
    if _fd is None:
        return
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if hasattr(params.get("backend"), "fn"):
            params["backend"] = watched(params["backend"])


def pytest_runtest_logstart(nodeid, location):
    pass  # the item is needed for its identity: see pytest_runtest_protocol


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    write({"start": item.nodeid, **identity(item)})


def cap(text: str) -> str:
    if len(text) <= CAPTURE_CAP:
        return text
    return text[:CAPTURE_CAP] + f"\n[attnbench check: {len(text) - CAPTURE_CAP} more characters of output dropped]\n"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.sections = [(name, cap(content)) for name, content in report.sections]


def pytest_runtest_logreport(report):
    """A test's verdict cell (the conformance plugin's rule, plugin.outcome_of), and its end."""
    from .plugin import outcome_of

    if (cell := outcome_of(report)) is not None:
        write({"cell": cell})
    if report.when == "teardown":
        write({"end": report.nodeid})


def pytest_sessionfinish(session, exitstatus):
    write({"finished": int(exitstatus)})
