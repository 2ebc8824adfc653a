"""torch's process-wide state: the snapshot puts back every setting it names, and the conformance plugin puts it
back after every test, so one test's backend cannot change the state the next test runs in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from attnbench.conformance.global_state import changed, restore, snapshot


def _flip_everything() -> None:
    """Change every setting a snapshot names, the way the global_state mutants and real kernels do."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(1234)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(torch.get_num_threads() + 1)
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.allow_tf32 = not torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = not torch.backends.cudnn.deterministic
    torch.set_autocast_enabled("cpu", True)
    torch.set_autocast_dtype("cpu", torch.float16)


def test_restore_puts_back_every_setting_of_the_snapshot():
    before = snapshot()
    try:
        _flip_everything()
        flipped = changed(before, snapshot())
    finally:
        restore(before)
    names = {line.split(":")[0] for line in flipped}
    assert names == {
        "default dtype",
        "CPU RNG state",
        "deterministic algorithms",
        "deterministic algorithms warn_only",
        "grad mode",
        "thread count",
        "cuda.matmul fp32_precision",  # set_float32_matmul_precision("medium") and allow_tf32 flipped
        "mkldnn.matmul fp32_precision",  # "medium" lets CPU matmuls run in bf16
        "cudnn.benchmark",
        "cudnn.deterministic",
        "cpu autocast",
        "cpu autocast dtype",
    }, flipped
    assert changed(before, snapshot()) == []


def test_a_test_that_changes_torch_state_does_not_reach_the_next_test(tmp_path):
    # Two tests in one pytest process with the conformance plugin: the first changes settings a kernel flips
    # and leaves them; the second still sees the process's own state.
    (tmp_path / "test_two.py").write_text(
        textwrap.dedent(
            """
            import torch

            THREADS = torch.get_num_threads()

            def test_poisons():
                torch.set_default_dtype(torch.float64)
                torch.use_deterministic_algorithms(True)
                torch.set_num_threads(THREADS + 1)

            def test_runs_after():
                assert torch.get_default_dtype() == torch.float32
                assert not torch.are_deterministic_algorithms_enabled()
                assert torch.get_num_threads() == THREADS
            """
        )
    )
    command = [sys.executable, "-m", "pytest", "-q", "-c", "/dev/null", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*command, "-p", "attnbench.conformance.plugin", "test_two.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
