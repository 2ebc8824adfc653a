"""The determinism properties judge what they claim: a batch-invariant formula passes batch_invariance and
repeatable, PyTorch's matmul formula does not pass batch_invariance (why no registered backend declares it), and
cuda_graph_replay skips off CUDA with its reason and is part of `attnbench run --profile gpu-short`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import attnbench
import pytest
import torch
from attnbench import Backend
from attnbench.bench.cli import RUN_PROFILES
from attnbench.bench.suites import CONFORMANCE_DIR
from attnbench.conformance.core import missing_feature
from attnbench.conformance.properties import PROPERTIES, run_property
from attnbench.conformance.strategies import Case
from mutants_determinism import invariant_attention
from spine_helpers import one_thread  # noqa: F401  (autouse: one torch thread)


@pytest.mark.parametrize("name", ["batch_invariance", "repeatable"])
def test_invariant_formula_passes(name):
    backend = Backend("invariant", invariant_attention, "elementwise sums", batch_invariant=True)
    run_property(PROPERTIES[name], backend, "cpu", [torch.float32, torch.float64], max_examples=8, derandomize=True)


def test_manual_is_not_batch_invariant_here():
    """manual's matmuls pick their kernel by the query count: 100 rows alone differ from the same rows of 200."""
    manual = dataclasses.replace(attnbench.get_backend("manual"), batch_invariant=True)
    case = Case(
        B=2, H=1, Tq=200, Tk=300, D=33, dtype=torch.float32, causal=True, magnitude=1.0, layout="contiguous", seed=0
    )
    with pytest.raises(AssertionError, match="run alone differ"):
        PROPERTIES["batch_invariance"].check(manual, case, "cpu")


def test_undeclared_backends_skip_batch_invariance():
    assert missing_feature(PROPERTIES["batch_invariance"], attnbench.get_backend("manual"), "cpu") == (
        "manual does not declare batch_invariant"
    )


def test_cuda_graph_replay_skips_on_cpu_with_its_reason():
    reason = missing_feature(PROPERTIES["cuda_graph_replay"], attnbench.get_backend("sdpa"), "cpu")
    assert reason == "CUDA-graph capture needs a CUDA device, not cpu"


def test_gpu_short_selects_cuda_graph_replay():
    k = RUN_PROFILES["gpu-short"]["correctness_k"]
    cmd = [sys.executable, "-m", "pytest", "-p", "attnbench.conformance.plugin", "--collect-only", "-q", "-k", k]
    cmd += [str(CONFORMANCE_DIR / "test_determinism.py"), "--backend", "sdpa"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=CONFORMANCE_DIR.parent).stdout
    assert "test_determinism[cuda-sdpa-cuda_graph_replay]" in out, out[-2000:]
