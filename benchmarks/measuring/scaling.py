"""Scaling exponents: how time and peak memory grow with T, from a sweep (log-log least squares).

    time ~ c * T^p  =>  log time = log c + p * log T;  p is the least-squares slope.

Small T is dominated by fixed costs (Python, kernel launch, the (B, H, T, D) inputs and outputs), so by default
the fit uses only the largest `last` sequence lengths of each series (FIT_LAST = 4, e.g. 512..4096 of the CPU
sweep): that is where the asymptotic exponent shows (about 2 for materialized scores, about 1 for flash memory).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

FIT_LAST = 4  # fit the largest this-many T of each series


def fit_exponent(xs: Iterable[float], ys: Iterable[float]) -> float:
    """Slope p of the least-squares line log y = a + p log x. Needs >= 2 distinct positive x and positive y."""
    pts = list(zip(xs, ys, strict=True))
    if any(x <= 0 or y <= 0 for x, y in pts):
        raise ValueError(f"log-log fit needs positive values, got {pts}")
    lx = [math.log(x) for x, _ in pts]
    ly = [math.log(y) for _, y in pts]
    if len(set(lx)) < 2:
        raise ValueError(f"log-log fit needs at least 2 distinct x values, got {sorted(set(x for x, _ in pts))}")
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def scaling_table(rows: Iterable[dict], last: int = FIT_LAST, kind: str = "op") -> list[dict]:
    """Time and memory exponents per (backend, device, dtype, mode) from rows of `kind` (benchmark `extra_info`
    dicts); feature rows (kind "feature_op", bench_features.py) are fitted per feature too.

    Rows need "kind" == kind, "T", "median_s", "peak_mem_bytes". Series with fewer than 2 sequence lengths are
    left out; an exponent is None where a series has a non-positive value (e.g. a call that allocates nothing).
    """
    series: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("kind") == kind:
            series[(r["backend"], r["device"], r["dtype"], r["mode"], r.get("feature") or "")][int(r["T"])] = r
    table = []
    for (backend, device, dtype, mode, feature), by_t in sorted(series.items()):
        ts = sorted(by_t)[-last:]
        if len(ts) < 2:
            continue
        table.append(
            {
                "backend": backend,
                "device": device,
                "dtype": dtype,
                "mode": mode,
                **({"feature": feature} if feature else {}),
                "T_fit": ts,
                "time_exponent": _maybe_fit(ts, [by_t[t]["median_s"] for t in ts]),
                "mem_exponent": _maybe_fit(ts, [by_t[t]["peak_mem_bytes"] for t in ts]),
            }
        )
    return table


def _maybe_fit(xs: list[int], ys: list[float]) -> float | None:
    return fit_exponent(xs, ys) if all(y and y > 0 for y in ys) else None
