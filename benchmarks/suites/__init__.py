"""Where the shipped pytest suites live, and the one way to launch them from any directory.

The conformance suite (attnbench.conformance) and the benchmark suites (attnbench.bench's bench_*.py) are
installed with the package, so `attnbench check` and `attnbench run` work after a plain `pip install`, from a
kernel author's own repository. The launch isolates pytest from the caller's project: no config file of
theirs is read (`-c os.devnull`), no cache is written, and the rootdir is the working directory given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import attnbench.conformance

CONFORMANCE_PLUGIN = "attnbench.conformance.plugin"
BENCH_DIR = Path(__file__).parent  # bench_*.py and their conftest (the benchmark plugin)
CONFORMANCE_DIR = Path(attnbench.conformance.__file__).parent
# --quick's correctness stage: the per-backend equivalence and causality properties (the whole suite otherwise)
QUICK_CONFORMANCE = ("test_equivalence.py", "test_causality.py")


def bench_file(stage: str) -> Path:
    """The shipped benchmark suite for a stage name such as 'bench_ops'."""
    return BENCH_DIR / f"{stage}.py"


def conformance_paths(quick: bool = False) -> list[str]:
    """The conformance suite's files (all of them, or the quick subset)."""
    if quick:
        return [str(CONFORMANCE_DIR / f) for f in QUICK_CONFORMANCE]
    return [str(CONFORMANCE_DIR)]


def pytest_command(args: list[str], rootdir: str | os.PathLike) -> list[str]:
    """`python -m pytest` with the conformance plugin, isolated from any pytest config where it runs."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        os.devnull,
        f"--rootdir={rootdir}",
        "-p",
        "no:cacheprovider",
        "-p",
        CONFORMANCE_PLUGIN,
        *args,
    ]


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """Stop a suite started with start_new_session=True: SIGTERM to its process group, SIGKILL after `grace`
    seconds; reaped."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
