"""Compare two saved runs: match rows by what was measured, flag slowdowns beyond a threshold and the noise.

A row regresses when its median got worse by more than `threshold` (relative) *and* the two runs' spreads
do not overlap (B's lower quartile is above A's upper quartile), so one noisy round cannot flag a backend.
Time-like metrics (lower is better): op / train_step / generate median seconds, train_to_target seconds.
Interleaved rows compare the ratio to the baseline (lower is better), which cancels machine-wide drift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .load import load_run

KEY = ["kind", "backend", "device", "dtype", "mode", "T", "use_cache"]


def metric_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: key columns, metric name, median, lower and upper quartile (lower is better for all)."""
    df = df.copy()
    for c in KEY:
        if c not in df:
            df[c] = None
    il = df["kind"] == "interleaved"
    ttt = df["kind"] == "train_to_target"
    out = df[KEY].copy()
    out["metric"] = np.where(il, "ratio to baseline", np.where(ttt, "seconds to target", "median seconds"))
    out["median"], out["lo"], out["hi"] = df["stats_median"], df.get("stats_q1"), df.get("stats_q3")
    if il.any():
        out.loc[il, "median"] = df.loc[il, "ratio_median"]
        out.loc[il, "lo"], out.loc[il, "hi"] = df.loc[il, "ratio_p25"], df.loc[il, "ratio_p75"]
    if ttt.any():
        secs = df.loc[ttt, "train_seconds"]
        out.loc[ttt, "median"] = out.loc[ttt, "lo"] = out.loc[ttt, "hi"] = secs
        out.loc[ttt, "reached"] = df.loc[ttt, "reached"]
    out[KEY] = out[KEY].astype(str)  # None/NaN alike, so rows match across runs
    return out


def compare(a: str | Path, b: str | Path, threshold: float = 0.1) -> pd.DataFrame:
    """Matched rows of runs a and b with change = median_b / median_a - 1 and a 'regression' flag."""
    ma, mb = metric_frame(load_run(a, strict=True).results), metric_frame(load_run(b, strict=True).results)
    m = ma.merge(mb, on=[*KEY, "metric"], suffixes=("_a", "_b"), how="outer", indicator=True)
    m["change"] = m["median_b"] / m["median_a"] - 1
    beyond = m["change"] > threshold
    separated = m["lo_b"].fillna(m["median_b"]) > m["hi_a"].fillna(m["median_a"])
    m["regression"] = beyond & separated
    m["improvement"] = (m["change"] < -threshold) & (m["hi_b"].fillna(m["median_b"]) < m["lo_a"].fillna(m["median_a"]))
    if "reached_a" in m:  # a backend that no longer reaches the target regressed, whatever its time
        lost = (m["reached_a"].astype(str) == "True") & (m["reached_b"].astype(str) == "False")
        m["regression"] |= lost
    m["only_in"] = m["_merge"].map({"left_only": "A", "right_only": "B", "both": ""})
    return m.drop(columns="_merge")


def render(m: pd.DataFrame, threshold: float) -> str:
    """A readable summary: regressions first, then counts."""
    shown = [c for c in ["kind", "backend", "device", "dtype", "mode", "T", "metric", "median_a", "median_b", "change"]]
    both = m[m["only_in"] == ""]
    lines = [f"{len(both)} matched rows, threshold {threshold:.0%} (and non-overlapping quartiles)"]
    for title, sel in (("REGRESSIONS", m["regression"]), ("improvements", m["improvement"])):
        rows = m[sel]
        lines.append(f"{title}: {len(rows)}")
        if len(rows):
            t = rows[shown].copy()
            t["change"] = t["change"].map(lambda x: f"{x:+.1%}")
            lines.append(t.to_string(index=False))
    for side in ("A", "B"):
        n = int((m["only_in"] == side).sum())
        if n:
            lines.append(f"{n} rows only in {side} (not compared)")
    return "\n".join(lines)
