"""Interleaved timing: speed-ups between backends measured in one run, robust to a noisy machine.

Timing A ten times and then B ten times compares A's minute with B's minute; on a shared machine the load
changes between them (the same configuration timed twice here differed by up to 4.8x). Instead every round
times each backend once, in a freshly shuffled order, and the ratio time(backend) / time(baseline) is taken
*within* the round, where both saw the same machine. The median of those per-round ratios, with its p25/p75
spread, is the speed-up estimate.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

from .measure import quantile, time_call

DEFAULT_BASELINE = "manual"  # the plain PyTorch formula, available on every device and dtype


def round_orders(names: list[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of calls in each round: every name once per round, shuffled per round (seeded)."""
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        orders.append(order)
    return orders


def interleaved_times(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    device="cpu",
    *,
    seed: int = 0,
    timer: Callable[[Callable[[], object], object], float] = time_call,
) -> dict[str, list[float]]:
    """Seconds of each call in each round, the calls interleaved in shuffled order (no warm-up here)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for order in round_orders(list(calls), rounds, seed):
        for name in order:
            times[name].append(timer(calls[name], device))
    return times


def ratio_summary(times: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """Per backend: median, p25 and p75 of the per-round ratios time(backend) / time(baseline), and the speed-up."""
    if baseline not in times:
        raise ValueError(f"baseline {baseline!r} was not timed; timed: {sorted(times)}")
    base = times[baseline]
    out = {}
    for name, ts in times.items():
        if len(ts) != len(base):
            raise ValueError(f"{name} has {len(ts)} rounds, the baseline {len(base)}")
        ratios = [t / b for t, b in zip(ts, base, strict=True)]
        med = statistics.median(ratios)
        out[name] = {
            "ratio_median": med,
            "ratio_p25": quantile(ratios, 0.25),
            "ratio_p75": quantile(ratios, 0.75),
            "speedup_median": 1.0 / med,
            "rounds": len(ratios),
        }
    return out
