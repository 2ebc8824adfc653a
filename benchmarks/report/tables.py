"""The report's tables, each a DataFrame of formatted cells built from the rows of a run (schema.select)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..schema import Run, select

# --------------------------------------------------------------------------------------------- numbers


def fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return format(x, spec)


def scaling_table(run: Run) -> pd.DataFrame:
    """Time and memory exponents per backend/device/dtype/mode, as the op benchmark fitted them."""
    return pd.DataFrame(run.extra("scaling", []))


WINDOW_GOAL = ("chunked", 1.2)  # a window's work is linear in T: chunked's windowed time exponent should be <= 1.2


def feature_scaling_table(run: Run) -> pd.DataFrame:
    """Time and memory exponents per backend/feature/device/dtype/mode (bench_features.py's fit), with the
    windowed chunked rows judged against WINDOW_GOAL."""
    t = pd.DataFrame(run.extra("feature_scaling", []))
    if t.empty:
        return t
    backend, limit = WINDOW_GOAL

    def goal(r) -> str:
        if r["backend"] != backend or not r["feature"].startswith("window"):
            return ""
        e = r["time_exponent"]
        return "—" if e is None or pd.isna(e) else f"{'met' if e <= limit else 'MISSED'} (<= {limit})"

    t = t.assign(goal=t.apply(goal, axis=1))
    cols = ["feature", "backend", "device", "dtype", "mode", "T_fit", "time_exponent", "mem_exponent", "goal"]
    return t[cols].sort_values(["feature", "device", "dtype", "mode", "backend"]).round(3)


def memory_class(exponent) -> str:
    if exponent is None or not np.isfinite(exponent):
        return "—"
    return f"{'quadratic' if exponent >= 1.5 else 'linear' if exponent >= 0.5 else 'flat'} (T^{exponent:.2f})"


def speedup_cell(r) -> str:
    """'1.80x [1.72–1.89]': median speed-up with the interquartile range of the interleaved ratios."""
    lo, hi = 1 / r["ratio_p75"], 1 / r["ratio_p25"]
    return f"{r['speedup_median']:.2f}x [{lo:.2f}–{hi:.2f}]"


def labelled_interleaved_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The interleaved rows, each with `where`: 'mode T=...', prefixed by device and dtype when the run has
    several (device, dtype) pairs, so that CPU and CUDA ratios of a backend never share a cell."""
    il = select(df, "interleaved")
    if il.empty:
        return il.assign(where=pd.Series(dtype=str))
    several = len(il[["device", "dtype"]].drop_duplicates()) > 1
    prefix = il["device"].astype(str) + " " + il["dtype"].astype(str) + " " if several else ""
    return il.assign(where=prefix + il["mode"].astype(str) + " T=" + il["T"].astype(int).astype(str))


# ---------------------------------------------------------------------------------------------- tables


def verdict_table(run: Run, df: pd.DataFrame) -> pd.DataFrame:
    info = run.run_info
    backends = list(dict.fromkeys([*info.get("backends", []), *df["backend"].dropna().astype(str).unique()]))
    corr = summarize(run.correctness, backends) if run.correctness else pd.DataFrame()
    scal = scaling_table(run)
    il = labelled_interleaved_rows(df)
    ttt = select(df, "train_to_target")
    rows = []
    for b in backends:
        row = {"backend": b}
        support = info.get("support", {}).get(b, {})
        ok = [combo for combo, why in support.items() if why is None]
        if support and not ok:  # its input-validation tests may pass, but no property ran: no verdict
            row.update({"correctness": "not run here (see below)", "worst error / bound": "—", "causality": "—"})
        elif b in corr.index:
            c = corr.loc[b]
            verdict = "PASS" if c["failed"] == 0 and c["passed"] > 0 else "FAIL" if c["failed"] else "—"
            row["correctness"] = f"{verdict}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped" + (
                f", {c['declared']} declared departures" if c["declared"] else ""
            )
            row["worst error / bound"] = (
                "—"
                if c["worst_ratio"] is None or pd.isna(c["worst_ratio"])
                else f"{c['worst_err']:.2e} / {c['worst_bound']:.2e} ({c['worst_ratio']:.2f})"
            )
            n_causal = c["causal_passed"] + c["causal_failed"]
            row["causality"] = ("—" if not n_causal else "PASS" if not c["causal_failed"] else "FAIL") + (
                f" ({c['causal_passed']}/{n_causal})" if n_causal else ""
            )
        else:
            row.update({"correctness": "—", "worst error / bound": "—", "causality": "—"})
        row["supports"] = ", ".join(ok) if support else "—"
        by_reason: dict[str, list[str]] = {}
        for device, why in info.get("forward_only", {}).get(b, {}).items():
            by_reason.setdefault(why, []).append(device)
        row["backward"] = "; ".join(f"none on {', '.join(ds)}: {why}" for why, ds in by_reason.items()) or "yes"
        if b in set(il["backend"]):
            g = il[il["backend"] == b]
            largest = g[g["T"] == g.groupby(["device", "dtype"])["T"].transform("max")]
            cells = [f"{speedup_cell(r)} {r['where']}" for _, r in largest.iterrows()]
            base = g["baseline"].dropna().iloc[0] if g["baseline"].notna().any() else "baseline"
            row[f"speed-up vs {base}"] = "; ".join(cells)
        else:
            row["speed-up vs baseline"] = "—"
        s = scal[scal["backend"] == b] if not scal.empty else scal
        if not s.empty:
            fwd = s[s["mode"] == "fwd"] if (s["mode"] == "fwd").any() else s
            row["memory class"] = memory_class(fwd["mem_exponent"].iloc[0])
            row["time exponent"] = fmt(fwd["time_exponent"].iloc[0], ".2f")
        else:
            row["memory class"] = row["time exponent"] = "—"
        t = ttt[ttt["backend"] == b] if not ttt.empty else ttt
        if not t.empty:
            r = t.iloc[0]
            row["to target"] = (
                f"{r['train_seconds']:.1f} s, {int(r['steps'])} steps"
                if bool(r["reached"])
                else f"not reached ({int(r['steps'])} steps, {r['train_seconds']:.1f} s)"
            )
        else:
            row["to target"] = "—"
        rows.append(row)
    out = pd.DataFrame(rows)
    # one speed-up column whatever the baseline's name (drop the placeholder when a named one exists)
    named = [c for c in out.columns if c.startswith("speed-up vs ") and c != "speed-up vs baseline"]
    if named and "speed-up vs baseline" in out:
        out[named[0]] = out[named[0]].fillna(out.pop("speed-up vs baseline"))
    return out.fillna("—")


def unsupported_table(run: Run) -> pd.DataFrame:
    """One row per (backend, device, reason) with its dtypes; a reason shared by every backend on a device
    (e.g. no CUDA on this machine) becomes a single 'every backend' row."""
    support = run.run_info.get("support", {})
    rows = [
        {"backend": b, "device": combo.split()[0], "dtype": combo.split()[-1], "why not": why}
        for b, combos in support.items()
        for combo, why in combos.items()
        if why is not None
    ]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    shared = df.groupby(["device", "why not"])["backend"].transform("nunique") == len(support)
    df.loc[shared, "backend"] = "every backend"
    out = df.groupby(["backend", "device", "why not"], sort=False)["dtype"].agg(lambda d: ", ".join(dict.fromkeys(d)))
    return out.reset_index()[["backend", "device", "dtype", "why not"]]


def capability_table(run: Run) -> pd.DataFrame:
    """One row per (backend, device): the dtypes it runs there and, per contract feature, 'yes' or the
    backend's reason it does not (run.json's "support" and "features", recorded by the job)."""
    support, features = run.run_info.get("support", {}), run.run_info.get("features", {})
    rows = []
    for backend, by_device in features.items():
        for device, feats in by_device.items():
            combos = (support.get(backend) or {}).items()
            runs = [c.split()[-1] for c, why in combos if c.split()[0] == device and why is None]
            row = {"backend": backend, "device": device, "dtypes": ", ".join(runs) or "none (see above)"}
            row.update({f: "yes" if why is None else why for f, why in feats.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    il = labelled_interleaved_rows(df)
    if il.empty:
        return il
    il = il.assign(cell=il.apply(speedup_cell, axis=1))
    order = il.sort_values(["device", "dtype", "mode", "T"])["where"].unique()
    t = il.pivot_table(index="backend", columns="where", values="cell", aggfunc="first")[order]
    return t.rename_axis(columns=None).reset_index()


def warm_cold_cell(r) -> str:
    """'1.23 / 4.56': warm and cold median in ms (cold alone missing in runs from before cold timing)."""
    return f"{fmt(r['stats_median'] * 1e3)} / {fmt(r.get('cold_median_s', np.nan) * 1e3)}"


def op_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per device/dtype/mode (and CUDA-graph timing apart): warm / cold median time (ms) per backend x T."""
    ops = select(df, "op")
    ops = ops.assign(timing=ops["timing"].fillna("eager") if "timing" in ops else "eager")
    out = []
    for (device, dtype, mode, timing), g in ops.groupby(["device", "dtype", "mode", "timing"]):
        t = g.assign(cell=g.apply(warm_cold_cell, axis=1))
        t = t.pivot_table(index="backend", columns="T", values="cell", aggfunc="first")
        t.columns = [f"T={int(c)}" for c in t.columns]
        how = "" if timing == "eager" else f" ({timing})"
        out.append(
            (f"{device} {dtype} {mode}{how}: median time (ms), warm / cold", t.rename_axis(columns=None).reset_index())
        )
    return out


def roofline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every op row on the roofline: intensity against the ridge point, the binding roof, achieved fractions of
    both roofs, and the integrity verdict."""
    ops = select(df, "op")
    if ops.empty or "bound" not in ops:
        return ops.iloc[0:0]
    cols = {
        "backend": None,
        "device": None,
        "dtype": None,
        "mode": None,
        "timing": None,
        "T": "d",
        "arithmetic_intensity": ".3g",
        "ridge_point": ".3g",
        "bound": None,
        "roofline_min_s": ".3g",
        "stats_median": ".3g",
        "cold_median_s": ".3g",
        "cold_over_warm": ".2f",
        "fraction_of_peak": ".1%",
        "fraction_of_bandwidth": ".1%",
        "integrity": None,
    }
    t = ops[ops["bound"].notna()][[c for c in cols if c in ops]].sort_values(
        ["device", "dtype", "mode", "backend", "T"]
    )
    t = formatted(t, cols)
    return t.rename(
        columns={
            "arithmetic_intensity": "FLOP/byte",
            "ridge_point": "ridge FLOP/byte",
            "roofline_min_s": "roofline min s",
            "stats_median": "warm s",
            "cold_median_s": "cold s",
            "cold_over_warm": "cold/warm",
            "fraction_of_peak": "of matmul peak (warm)",
            "fraction_of_bandwidth": "of bandwidth (cold)",
        }
    )


def feature_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every feature-sweep row: time, speed-up over the dense-masked baseline, peak memory, FLOP/s of the
    visible pairs and its fraction of the matmul peak."""
    rows = select(df, "feature_op")
    if rows.empty:
        return rows

    def speedup(r) -> str:
        return speedup_cell(r) if pd.notna(r.get("ratio_median")) else f"baseline skipped: {r.get('baseline_skipped')}"

    rows = rows.assign(speedup=rows.apply(speedup, axis=1), peak_mib=rows["peak_mem_bytes"] / 2**20)
    cols = {
        "feature": None,
        "device": None,
        "dtype": None,
        "mode": None,
        "T": "d",
        "backend": None,
        "stats_median": ".3g",
        "speedup": None,
        "peak_mib": ".4g",
        "flop_per_s": ".3g",
        "fraction_of_peak": ".1%",
        "threads": "d",
    }
    t = rows.sort_values(["feature", "device", "dtype", "mode", "T", "backend"])[[c for c in cols if c in rows]]
    baseline = rows["baseline"].dropna().iloc[0]
    return formatted(t, cols).rename(
        columns={
            "stats_median": "median s",
            "speedup": f"speed-up vs {baseline} [p25–p75]",
            "peak_mib": "peak MiB",
            "flop_per_s": "FLOP/s (visible pairs)",
            "fraction_of_peak": "of matmul peak",
        }
    )


def formatted(t: pd.DataFrame, specs: dict[str, str | None]) -> pd.DataFrame:
    """t with each column that has a format spec formatted ('d': integer), missing values as '—'."""
    t = t.copy()
    for c, spec in specs.items():
        if spec and c in t:
            t[c] = t[c].map(lambda x, s=spec: fmt(int(x) if s == "d" else x, s) if pd.notna(x) else "—")
    return t


def op_largest_T(df: pd.DataFrame) -> pd.DataFrame:
    ops = select(df, "op")
    if ops.empty:
        return ops
    top = ops[ops["T"] == ops.groupby(["device", "dtype", "mode"])["T"].transform("max")]
    cols = {
        "backend": None,
        "device": None,
        "dtype": None,
        "mode": None,
        "T": "d",
        "stats_median": ".3g",
        "cold_median_s": ".3g",
        "first_call_s": ".3g",
        "tokens_per_s": ".3g",
        "flop_per_s": ".3g",
        "fraction_of_peak": ".2%",
        "bytes_per_s": ".3g",
        "fraction_of_bandwidth": ".2%",
        "bound": None,
        "peak_mem_bytes": ".3g",
        "score_matrix_bytes": ".3g",
    }
    t = top[[c for c in cols if c in top]].sort_values(["device", "dtype", "mode", "backend"])
    t = formatted(t, cols)
    return t.rename(
        columns={"stats_median": "warm median s", "cold_median_s": "cold median s", "first_call_s": "first call s"}
    )


def model_table(df: pd.DataFrame) -> pd.DataFrame:
    m = select(df, "train_step", "generate")
    if m.empty:
        return m
    cols = [
        c
        for c in ("kind", "backend", "device", "dtype", "use_cache", "B", "T", "stats_median", "tokens_per_s")
        if c in m
    ]
    t = m[cols].sort_values(["kind", "backend"]).copy()
    for c in ("B", "T"):
        if c in t:
            t[c] = t[c].astype("Int64")
    t["stats_median"] = (t["stats_median"] * 1e3).map(lambda x: fmt(x, ".3g"))
    if "tokens_per_s" in t:
        t["tokens_per_s"] = t["tokens_per_s"].map(lambda x: fmt(x, ".4g"))
    return t.rename(columns={"stats_median": "median ms"})


def side_by_side_table(df: pd.DataFrame) -> pd.DataFrame:
    """nanoGPT's training step against this GPT's, alternated in one process (bench_model.py --nanogpt)."""
    if "kind" not in df:
        return df.iloc[0:0]
    rows = df[df["kind"] == "nanogpt_side_by_side"]
    cols = [
        "dtype",
        "compile",
        "steps",
        "threads",
        "nanogpt_ms",
        "attnbench_ms",
        "ratio",
        "first_step_s",
        "load_avg_1m",
    ]
    return rows[[c for c in cols if c in rows]].round(3).rename(columns={"ratio": "ratio attnbench/nanoGPT"})


def ttt_table(df: pd.DataFrame) -> pd.DataFrame:
    ttt = select(df, "train_to_target")
    cols = [
        "backend",
        "device",
        "dtype",
        "target",
        "reached",
        "steps",
        "train_seconds",
        "eval_seconds",
        "final_val_loss",
        "leak_flag",
        "leak_floor",
    ]
    if ttt.empty:
        return ttt
    t = ttt[[c for c in cols if c in ttt]].round(3)
    return t.astype({"steps": "Int64"}) if "steps" in t else t


# ------------------------------------------------------------------------------------------- correctness


def _backend_of(case: dict, backends: list[str]) -> str | None:
    """The backend a test case is about: its 'backend' property, else a parametrize id naming a known backend."""
    if case.get("backend"):
        return case["backend"]
    ids = re.split(r"[\[\]\-,]", case["name"])
    # longest names first, so 'sdpa_math' is not taken for 'sdpa'
    for name in sorted(backends, key=len, reverse=True):
        if name in ids:
            return name
    return None


def _family(case: dict) -> str | None:
    """The family of properties a test case ran (recorded by the suite); a correctness stage written before families
    were recorded is read by its test names, so regenerating an old run keeps its causality column."""
    if "family" in case:
        return case["family"]
    return "causality" if "causal" in (case["name"] + case["classname"]).lower() else None


def _float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def summarize(correctness: dict, backends: list[str]) -> pd.DataFrame:
    """Per backend: tests passed/failed/skipped/declared (an expected failure: a declared departure, seen), causality
    tests passed/failed, worst max_err/bound."""
    rows = {}
    for case in correctness.get("cases", []):
        name = _backend_of(case, backends)
        if name is None:
            continue
        r = rows.setdefault(
            name,
            dict(
                passed=0,
                failed=0,
                skipped=0,
                declared=0,
                causal_passed=0,
                causal_failed=0,
                worst_ratio=None,
                worst_err=None,
                worst_bound=None,
                first_failure="",
            ),
        )
        r[case["status"]] += 1
        if _family(case) == "causality" and case["status"] in ("passed", "failed"):
            r["causal_" + case["status"]] += 1
        if case["status"] == "failed" and not r["first_failure"]:
            r["first_failure"] = f"{case['name']}: {case['message']}"
        err, bound = _float(case.get("max_err")), _float(case.get("bound"))
        if err is not None and bound:
            ratio = err / bound
            if r["worst_ratio"] is None or ratio > r["worst_ratio"]:
                r.update(worst_ratio=ratio, worst_err=err, worst_bound=bound)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("backend")
