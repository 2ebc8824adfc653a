"""Training to a target loss, per backend (benchmarks/measuring/train_to_target.py has the recipe and the runner).

One pytest-benchmark row per (backend, device), timed once (rounds=1): the row's own time is the whole run
including evaluation; extra_info carries steps, training seconds (evaluation excluded), evaluation seconds,
the curve and the leak flag. Curve agreement between the backends of a device goes into the JSON's top-level
"attnbench" -> "curve_agreement" -> device.

    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only                 # sdpa and manual to 1.88
    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only --ttt-full      # every backend to 1.88
    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only --ttt-quick     # seconds: loose target
    pytest benchmarks/suites/bench_train_to_target.py --benchmark-only --ttt-recipe gqa_window  # GQA + window:
                                                            # every backend with both features (others skip, why)
"""

import pytest
from attnbench.bench.measuring.train_to_target import curve_agreement, recipe_unavailable_reason
from attnbench.bench.measuring.train_to_target import train_to_target as run_to_target
from attnbench.gpt.data import Dataset

_RUNS: dict[str, list] = {}  # device -> TargetRun, in order, for curve agreement


@pytest.fixture(scope="module")
def shakespeare():
    return Dataset.load()


def test_train_to_target(benchmark, ttt_case, ttt_recipe, shakespeare, attnbench_summary):
    backend, device = ttt_case
    reason = recipe_unavailable_reason(backend, ttt_recipe, device)
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
