"""Compare two saved runs: match rows by what was measured, flag slowdowns beyond a threshold and the noise.

A row got worse when its median grew by more than `threshold` (relative) *and* the two medians' ~95%
intervals do not overlap. A median of n rounds with interquartile range IQR has a standard error of about
0.93 * IQR / sqrt(n) (1.2533 * sigma / sqrt(n), sigma = IQR / 1.349 for a normal spread), so the interval is
median +- 2 of those: one noisy round cannot flag a backend, and many rounds resolve a real shift.

Which rows count as regressions (and fail --fail-on-regression): the metrics that cancel machine drift, i.e.
the interleaved ratio to the baseline and the steps to the target loss, plus a backend that no longer reaches
the target. Absolute times (op / train_step / generate median seconds, op cold medians, seconds to target) are
timed sequentially: on a shared machine two clean runs of the same code differ in them by tens of percent for one
backend while the interleaved ratios agree, so they are listed as "slower in absolute time" and gate only with
gate_absolute=True (a quiet, dedicated machine, or two machines compared on purpose).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..schema import ReportInputError, load_run

COLD = ("cold_median_s", "cold_q1_s", "cold_q3_s", "cold_rounds")  # an op row's cold rounds
KEY = ["kind", "backend", "device", "dtype", "mode", "feature", "T", "use_cache", "threads", "timing"]


def metric_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: key columns, metric name, median, lower and upper quartile (lower is better for all)."""
    df = df.copy()
    for c in KEY:
        if c not in df:
            df[c] = None
    df.loc[(df["kind"] == "op") & df["timing"].isna(), "timing"] = "eager"  # rows from before CUDA-graph rows
    il = df["kind"] == "interleaved"
    ttt = df["kind"] == "train_to_target"
    out = df[KEY].copy()
    out["metric"] = np.where(il, "ratio to baseline", np.where(ttt, "seconds to target", "median seconds"))
    out["median"], iqr = df["stats_median"], df.get("stats_q3") - df.get("stats_q1")
    if il.any():
        out.loc[il, "median"] = df.loc[il, "ratio_median"]
        iqr[il] = df.loc[il, "ratio_p75"] - df.loc[il, "ratio_p25"]
    half = 2 * 0.93 * iqr / np.sqrt(df["stats_rounds"].clip(lower=1))  # ~95% interval of the median
    out["lo"], out["hi"] = out["median"] - half, out["median"] + half
    for c in COLD:  # runs from before cold timing have none
        df[c] = df[c] if c in df else np.nan
    cold = df["cold_median_s"].notna()
    cold_half = 2 * 0.93 * (df["cold_q3_s"] - df["cold_q1_s"]) / np.sqrt(df["cold_rounds"].clip(lower=1))
    colds = out[cold].assign(metric="cold median seconds", median=df.loc[cold, "cold_median_s"])
    colds = colds.assign(lo=colds["median"] - cold_half[cold], hi=colds["median"] + cold_half[cold])
    if ttt.any():
        secs = df.loc[ttt, "train_seconds"]
        out.loc[ttt, "median"] = out.loc[ttt, "lo"] = out.loc[ttt, "hi"] = secs
        out.loc[ttt, "reached"] = df.loc[ttt, "reached"]
        steps = out[ttt].assign(metric="steps to target", median=df.loc[ttt, "steps"])  # deterministic per seed
        out = pd.concat([out, steps.assign(lo=steps["median"], hi=steps["median"])], ignore_index=True)
    out = pd.concat([out, colds], ignore_index=True)
    for c in ("T", "threads"):  # 1024 and 1024.0 alike (a column with gaps turns float)
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    out[KEY] = out[KEY].astype(str)  # None/NaN alike, so rows match across runs
    return out


DRIFT_FREE = ("ratio to baseline", "steps to target")  # metrics that gate by default (module docstring)


def run_rows(path: str | Path) -> pd.DataFrame:
    """The benchmark rows of a run; a run without any is an error (nothing to compare is not 'no regression')."""
    df = load_run(path, strict=True).results
    if df.empty:
        raise ReportInputError(f"{path}: no benchmark rows to compare")
    return df


def compare(a: str | Path, b: str | Path, threshold: float = 0.1, gate_absolute: bool = False) -> pd.DataFrame:
    """Matched rows of runs a and b with change = median_b / median_a - 1, a 'worse' flag (beyond threshold and
    spread), and 'regression' = worse on a drift-free metric (any metric with gate_absolute), target lost, or
    a gated row of a that b no longer has ('missing')."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"--threshold must be a finite number >= 0, got {threshold!r}")
    ma, mb = metric_frame(run_rows(a)), metric_frame(run_rows(b))
    for path, frame in ((a, ma), (b, mb)):
        if frame["median"].isna().all():
            raise ReportInputError(f"{path}: every median is missing or NaN: nothing to compare")
    m = ma.merge(mb, on=[*KEY, "metric"], suffixes=("_a", "_b"), how="outer", indicator=True)
    m["change"] = m["median_b"] / m["median_a"] - 1
    beyond = m["change"] > threshold
    separated = m["lo_b"].fillna(m["median_b"]) > m["hi_a"].fillna(m["median_a"])
    m["worse"] = beyond & separated
    gated = m["metric"].isin(DRIFT_FREE) | gate_absolute
    m["regression"] = m["worse"] & gated
    m["improvement"] = (m["change"] < -threshold) & (m["hi_b"].fillna(m["median_b"]) < m["lo_a"].fillna(m["median_a"]))
    if "reached_a" in m:  # a backend that no longer reaches the target regressed, whatever its time
        lost = (m["reached_a"].astype(str) == "True") & (m["reached_b"].astype(str) == "False")
        m["regression"] |= lost
    # gated in a, gone from b (or no longer measured: a NaN median): its gate cannot pass
    m["missing"] = ((m["_merge"] == "left_only") | (m["median_a"].notna() & m["median_b"].isna())) & gated
    m["regression"] |= m["missing"]
    m["only_in"] = m["_merge"].map({"left_only": "A", "right_only": "B", "both": ""})
    return m.drop(columns="_merge")


def render(m: pd.DataFrame, threshold: float) -> str:
    """A readable summary: regressions first, then counts."""
    shown = [c for c in ["kind", "backend", "device", "dtype", "mode", "T", "metric", "median_a", "median_b", "change"]]
    both = m[m["only_in"] == ""]
    lines = [f"{len(both)} matched rows, threshold {threshold:.0%} (and non-overlapping ~95% intervals of the medians)"]
    ratios = both[(both["metric"] == "ratio to baseline") & both["change"].notna()]
    if len(ratios):  # how far two runs' interleaved ratios agree: the reproducibility figure
        r = ratios.loc[ratios["change"].abs().idxmax()]
        where = f"{r['backend']} {r['device']} {r['dtype']} {r['mode']} T={r['T']}"
        lines.append(f"largest change of a ratio to the baseline: {r['change']:+.1%} ({where})")
    sections = (
        ("REGRESSIONS", m["regression"] & ~m["missing"]),
        ("MISSING IN B (gated rows of A that B does not have: regressions)", m["missing"]),
        ("slower in absolute time (not gated: sequential timings drift)", m["worse"] & ~m["regression"]),
        ("improvements", m["improvement"]),
    )
    for title, sel in sections:
        rows = m[sel]
        lines.append(f"{title}: {len(rows)}")
        if len(rows):
            t = rows[shown].copy()
            t["change"] = t["change"].map(lambda x: "—" if pd.isna(x) else f"{x:+.1%}")
            lines.append(t.to_string(index=False))
    for side in ("A", "B"):
        n = int(((m["only_in"] == side) & ~m["missing"]).sum())
        if n:
            lines.append(f"{n} rows only in {side} (not compared)")
    return "\n".join(lines)
