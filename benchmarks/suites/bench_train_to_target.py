"""Training to a target loss, per backend (benchmarks/measuring/train_to_target.py has the recipe and the runner).

One pytest-benchmark row per (backend, device), timed once (rounds=1): the row's own time is the whole run
including evaluation; extra_info carries steps, training seconds (evaluation excluded), evaluation seconds,
the curve and the leak flag. Curve agreement between the backends of a device goes into the JSON's top-level
"attnbench" -> "curve_agreement" -> device.

    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only                 # sdpa and manual to 1.88
    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only --ttt-full      # every backend to 1.88
    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only --ttt-quick     # seconds: loose target
"""

import dataclasses

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.measure import unavailable_reason
from attnbench.bench.measuring.train_to_target import (
    FAST_RECIPE,
    QUICK_RECIPE,
    SPINE_RECIPE,
    cpu_backends,
    curve_agreement,
)
from attnbench.bench.measuring.train_to_target import train_to_target as run_to_target
from attnbench.gpt.data import Dataset

DEFAULT_BACKENDS = ["sdpa", "manual"]  # PyTorch's fused kernel and the explicit-mask formula: fits in ~3 min on CPU
RECIPES = {"fast": FAST_RECIPE, "spine": SPINE_RECIPE}
_RUNS: dict[str, list] = {}  # device -> TargetRun, in order, for curve agreement


def _devices(config) -> list[str]:
    opt = config.getoption("bench_device", None)
    if opt == "all":
        return ["cpu", "cuda"]
    return [opt] if opt else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "ttt_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    names = config.getoption("ttt_backends")
    if names:
        backends = [b.strip() for b in names.split(",") if b.strip()]
    elif config.getoption("ttt_full") or config.getoption("ttt_quick"):
        backends = cpu_backends("cpu")  # every backend (those that cannot run on a device skip with the reason)
    else:
        backends = DEFAULT_BACKENDS
    cases = [(b, dev) for dev in _devices(config) for b in backends]
    metafunc.parametrize("ttt_case", cases, ids=[f"{b}-{dev}" for b, dev in cases])


@pytest.fixture(scope="module")
def ttt_recipe(pytestconfig):
    recipe = QUICK_RECIPE if pytestconfig.getoption("ttt_quick") else RECIPES[pytestconfig.getoption("ttt_recipe")]
    target = pytestconfig.getoption("ttt_target")
    return recipe if target is None else dataclasses.replace(recipe, target=target)


@pytest.fixture(scope="module")
def shakespeare():
    return Dataset.load()


def test_train_to_target(benchmark, ttt_case, ttt_recipe, shakespeare, attnbench_summary):
    backend, device = ttt_case
    reason = unavailable_reason(get_backend(backend), device, torch.float32)
    if reason:
        pytest.skip(reason)
    run = benchmark.pedantic(
        run_to_target, args=(backend, shakespeare, ttt_recipe), kwargs={"device": device}, rounds=1
    )
    benchmark.extra_info.update(run.extra_info())
    _RUNS.setdefault(device, []).append(run)
    attnbench_summary.setdefault("curve_agreement", {})[device] = curve_agreement(_RUNS[device])
    assert not run.leak_flag, (
        f"{backend}: loss {run.min_loss:.3f} below the plausibility floor {run.leak_floor}: causality leak?"
    )
