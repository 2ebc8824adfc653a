"""`attnbench check`: the conformance suite on backends, supervised so that nothing a backend does passes unjudged.

The suite runs in a pytest process of its own (its own process group, in a scratch directory), which logs each
test's start, every call of the backend under test with its sizes, each verdict cell and its normal end
(conformance/supervised.py). This process watches that log:

- the pytest process ends without its normal end (an exit of any code, a signal such as SIGSEGV, the OOM killer):
  the test it was running FAILs, naming the cause and the sizes of the call in flight;
- the log goes quiet for longer than the time limit (a hang): the process group is killed, and the test FAILs
  the same way;
- either way pytest starts again on the tests not yet judged, so one crash does not hide the other verdicts; a
  backend that brought the process down MAX_CRASHES times is given up on (its remaining tests are not run);
- SIGTERM or SIGINT (a CI cancel, Ctrl-C) stops the pytest process group and removes the scratch directory;
- what pytest prints is passed through as it comes, at most OUTPUT_CAP bytes per pytest process.

The verdict table is printed last, over every pytest process, and the exit code is 0 only if each backend's
properties passed (or were declared departures) and every pytest process ended normally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import suites

# Seconds the suite may go without logging anything (a test start, a backend call, a verdict) before the test in
# flight is failed as hung: a backend call plus the float64 reference of the largest fixed example takes seconds on
# 2 busy cores; the thorough profile draws larger cases.
TIME_LIMITS = {"ci": 300.0, "dev": 300.0, "thorough": 1800.0}
STARTUP_LIMIT = 600.0  # seconds from a pytest process's start (or a test's end) to the next test's start
MAX_CRASHES = 3  # crashes or hangs of one backend before its remaining tests are left out
OUTPUT_CAP = 8 * 2**20  # bytes of a pytest process's output passed through; the rest is counted, not shown
SUPERVISED_PLUGIN = "attnbench.conformance.supervised"


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: stop the suite, clean up, exit 128 + the signal's number."""

    def __init__(self, signum: int):
        self.signum = signum


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else "")
    return f"the process exited with code {returncode}"


def describe_call(call: list | None) -> str:
    if call is None:
        return "before its first call of the backend"
    B, H, Tq, Tk, D, dtype = call
    return f"in a call with B={B} Hq={H} Tq={Tq} Tk={Tk} D={D} {dtype}"


class Pump(threading.Thread):
    """Copies a pytest process's output to ours as it comes (a killed run shows where it was), up to a cap."""

    def __init__(self, stream, cap: int = OUTPUT_CAP):
        super().__init__(daemon=True)
        self.stream, self.cap, self.passed, self.dropped = stream, cap, 0, 0

    def run(self):
        out = sys.stdout.buffer
        while chunk := self.stream.read1(65536):
            keep = chunk[: max(self.cap - self.passed, 0)]
            self.passed += len(keep)
            self.dropped += len(chunk) - len(keep)
            if keep:
                out.write(keep)
                out.flush()


class Log:
    """The records a supervised pytest process wrote (conformance/supervised.py), read as they arrive."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.last_seen = time.monotonic()
        self.finished = False
        self.ended: list[str] = []  # node ids whose teardown ran
        self.cells: list[dict] = []  # verdict cells (plugin.outcome_of)
        self.left_out: dict[str, int] = {}  # backend given up on -> tests of it not run
        self.start: dict | None = None  # the test in flight: {"start": nodeid, "backend", "property"}
        self.call: list | None = None  # its last backend call's sizes

    def read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        if not complete:
            return
        self.offset += len(complete)
        self.last_seen = time.monotonic()
        for r in map(json.loads, complete.decode().splitlines()):
            if "start" in r:
                self.start, self.call = r, None
            elif "call" in r:
                self.call = r["call"]
            elif "end" in r:
                self.ended.append(r["end"])
                self.start, self.call = None, None
            elif "cell" in r:
                self.cells.append(r["cell"])
            elif "left_out" in r:
                self.left_out.update(r["left_out"])
            elif "finished" in r:
                self.finished = True


def supervise(cmd: list[str], scratch: Path, env: dict, time_limit: float) -> int:
    """Run the conformance pytest command `cmd` until every test is judged; print the verdict; the exit code."""
    from attnbench.conformance.plugin import SIZES_TITLE, VERDICT_TITLE, largest_sizes, tally, verdict_table

    judged: list[str] = []  # node ids judged (ended, or failed by a crash or hang): left out of a restart
    given_up: list[str] = []
    crashes: dict[str, int] = {}
    left_out: dict[str, int] = {}  # backend given up on -> its tests that were not run
    cells: list[dict] = []
    rc = 0
    for attempt in range(1, 10_000):
        log, skip = Log(scratch / f"check-{attempt}.jsonl"), scratch / f"skip-{attempt}.json"
        skip.write_text(json.dumps({"nodeids": judged, "backends": given_up}))
        args = [f"--attnbench-check-log={log.path}", f"--attnbench-check-skip={skip}"]
        proc = subprocess.Popen(
            [*cmd, "-p", SUPERVISED_PLUGIN, *args],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a hang or a cancel is stopped with all its children
        )
        pump = Pump(proc.stdout)
        pump.start()
        hung = False
        try:
            while proc.poll() is None:
                try:
                    proc.wait(0.2)  # returns as soon as the suite ends
                except subprocess.TimeoutExpired:
                    pass
                log.read()
                # the limit holds while a test is in flight; start-up (imports, collection) gets STARTUP_LIMIT
                limit = time_limit if log.start is not None else max(time_limit, STARTUP_LIMIT)
                if time.monotonic() - log.last_seen > limit:
                    hung = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        finally:
            if proc.poll() is None:  # stopped by a signal to us: stop the suite, every process of it
                suites.stop_group(proc, grace=5)
            pump.join(5)
        log.read()
        if pump.dropped:
            print(f"\nattnbench check: {pump.dropped} more bytes of output dropped (the cap is {OUTPUT_CAP} bytes)")
        cells += log.cells
        judged += log.ended
        left_out.update(log.left_out)
        if log.finished and not hung:
            # pytest's "no tests collected" (5) after a restart only means every test left was already judged
            rc = max(rc, 0 if proc.returncode == 5 and attempt > 1 else proc.returncode)
            break
        start, call = log.start, log.call
        if start is None:  # stopped outside any test (start-up, collection): nothing to restart around
            why = f"no progress for {STARTUP_LIMIT:g} s" if hung else describe_exit(proc.returncode)
            print(f"attnbench check: the suite stopped outside any test: {why}")
            rc = max(rc, 1)
            break
        cause = f"hung: no progress for {time_limit:g} s" if hung else f"crashed: {describe_exit(proc.returncode)}"
        cause += f" {describe_call(call)}"
        test = start["start"].rpartition("::")[2]
        print(f"\nattnbench check: FAIL {start['property']} on {start['backend']} ({test}): {cause}", flush=True)
        backend = start["backend"]
        cells.append({"backend": backend, "property": start["property"], "outcome": "failed", "reason": cause})
        cells[-1]["largest"] = {}
        judged.append(start["start"])
        rc = max(rc, 1)
        crashes[backend] = crashes.get(backend, 0) + 1
        if crashes[backend] == MAX_CRASHES:
            given_up.append(backend)
            print(
                f"attnbench check: {backend} brought the suite down {MAX_CRASHES} times; its other tests are left out"
            )
    verdicts, largest = tally(cells)
    failed = sorted({backend for (backend, _), cell in verdicts.items() if cell["failed"]})
    causes = [line for backend in failed for line in likely_causes(backend, env)]
    sections = ((SIZES_TITLE, largest_sizes(largest)), (CAUSES_TITLE, causes), (VERDICT_TITLE, verdict_table(verdicts)))
    for title, lines in sections:  # the verdict last, after the long output
        if lines:
            print(f"\n== {title} ==", *lines, sep="\n")
    for backend, n in sorted(left_out.items()):
        print(f"{backend}: {n} tests not run (it brought the suite down {MAX_CRASHES} times)")
    if not verdicts:
        print("attnbench check: no conformance test ran", file=sys.stderr)
    return rc if rc or verdicts else 5


CAUSES_TITLE = "likely causes: conventions the failed backends depart from (attnbench probe)"
PROBE_LIMIT = 120  # seconds the convention probe of a failed backend may take
DEPARTURES = "departures from the contract, and the adapter lines that fix them:"  # probe.render's heading


def likely_causes(spec: str, env: dict) -> list[str]:
    """The conventions `attnbench probe` finds `spec` departing from, each with its fix or the declaration that
    states it: one such cause fails several properties at once, so it is named once, here. The probe runs as its
    own process (a kernel that crashes or hangs on a probe's input takes only the probe down); [] where it finds
    every convention followed or declared."""
    cmd = [sys.executable, "-m", "attnbench.bench.cli", "probe", spec]
    try:
        probe = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PROBE_LIMIT)
    except subprocess.TimeoutExpired:
        return [f"{spec}: the convention probe did not end within {PROBE_LIMIT} s"]
    if DEPARTURES not in probe.stdout:
        return []
    found = [line for line in probe.stdout.split(DEPARTURES, 1)[1].splitlines() if line.strip()]
    return [f"{spec}:", *(f"  {line}" for line in found if not line.startswith("declared:"))]


def check(specs: list[str], profile: str, quick: bool, pytest_args: list[str], time_limit: float | None) -> int:
    """The conformance suite on `specs` (already resolved, the current directory on PYTHONPATH: options.
    import_from_cwd), supervised; the exit code."""
    limit = TIME_LIMITS[profile] if time_limit is None else time_limit
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress as it happens: a killed run shows where it was

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with tempfile.TemporaryDirectory(prefix="attnbench-check-") as scratch:
            args = [*suites.conformance_paths(quick), *(f"--backend={s}" for s in specs)]
            cmd = suites.pytest_command([*args, f"--hypothesis-profile={profile}", "-q", *pytest_args], scratch)
            return supervise(cmd, Path(scratch), env, limit)
    except Stopped as e:
        print(f"\nattnbench check: stopped by {signal.Signals(e.signum).name}; the suite was stopped", file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
