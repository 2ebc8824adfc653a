"""`attnbench check` is a CI gate: hostile plug-ins must end in a FAIL verdict and a non-zero exit, never a pass.

Each test writes a plug-in module to tmp_path and runs the real command on it, narrowed to the equivalence test
(`-- -k ...`) so that one run takes seconds. Pass rule: a non-zero exit code, and a verdict line naming the backend
FAIL and the property it broke, with the cause where the process did not survive to say it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HOSTILE = textwrap.dedent(
    """
    import os, signal, time
    import torch
    import torch.nn.functional as F


    def correct(q, k, v, causal, scale):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.size(2) == k.size(2), scale=scale)


    def exits(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        if k.size(2) >= 64:
            os._exit(0)  # "success", from inside the suite
        return correct(q, k, v, causal, scale)


    def segfaults(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        if k.size(2) >= 64:
            os.kill(os.getpid(), signal.SIGSEGV)
        return correct(q, k, v, causal, scale)


    def hangs(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        if k.size(2) >= 64:
            time.sleep(3600)
        return correct(q, k, v, causal, scale)


    def floods(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
        print("x" * 2**20)  # 1 MiB of output a call, and a wrong answer
        return correct(q, k, v, causal, scale) * 1.01
    """
)
ONE_TEST = ["--", "-k", "equivalence and not kernel and cpu"]  # the drawn equivalence test on the CPU


def attnbench(tmp_path: Path, *args: str, **kwargs) -> subprocess.Popen:
    (tmp_path / "hostile.py").write_text(HOSTILE)
    cmd = [sys.executable, "-m", "attnbench.bench.cli", "check", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def run(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = attnbench(tmp_path, *args)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize(
    "fn, cause",
    [
        ("exits", "crashed: the process exited with code 0 in a call with B="),
        ("segfaults", "crashed: killed by SIGSEGV in a call with B="),
    ],
)
def test_a_backend_that_ends_the_process_fails_naming_the_property_and_sizes(tmp_path, fn, cause):
    rc, out = run(tmp_path, f"hostile:{fn}", "--quick", *ONE_TEST)
    assert rc == 1, out[-3000:]
    assert f"hostile:{fn}: FAIL" in out
    assert f"failed equivalence: {cause}" in out  # the sizes of the call in flight follow "B="


def test_a_hang_fails_after_the_time_limit_naming_the_property(tmp_path):
    start = time.monotonic()
    rc, out = run(tmp_path, "hostile:hangs", "--quick", "--timeout", "3", *ONE_TEST)
    assert rc == 1, out[-3000:]
    assert "failed equivalence: hung: no progress for 3 s in a call with B=" in out
    assert time.monotonic() - start < 300  # the hanging call sleeps an hour: the limit ended it


def test_a_flood_of_output_is_capped_and_the_backend_still_fails(tmp_path):
    rc, out = run(tmp_path, "hostile:floods", "--quick", *ONE_TEST)
    assert rc == 1
    assert "hostile:floods: FAIL" in out and "failed: equivalence" in out
    assert len(out) < 2**20  # the backend printed tens of MiB
    assert "more characters of output dropped" in out


def test_a_module_that_exits_on_import_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "quits.py").write_text("raise SystemExit(3)\n")
    rc, out = run(tmp_path, "quits:attention")
    assert rc == 2
    assert out.strip().splitlines() == [
        "attnbench check: error: backends: cannot load backend 'quits:attention': SystemExit: 3"
    ]


def test_sigterm_stops_the_suite_and_removes_its_scratch_directory(tmp_path):
    proc = attnbench(tmp_path, "hostile:hangs", "--quick", *ONE_TEST, env={**os.environ, "TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("attnbench-check-*/check-1.jsonl")):  # the suite has started
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out.decode()[-2000:]
    assert b"stopped by SIGTERM" in out
    assert not list(tmp_path.glob("attnbench-check-*"))  # scratch removed
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == []  # the pytest child (its whole process group) was stopped and reaped
