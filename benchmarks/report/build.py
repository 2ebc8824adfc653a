"""Build report.md, report.html (self-contained), results.csv and the PNG plots of a run directory."""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from attnbench.bench.measuring import scaling

from . import plots
from .correctness import summarize
from .load import Run, load_run

# Derived files: rebuilt by every build, never inputs.
OUTPUTS = ("report.md", "report.html", "results.csv")


# --------------------------------------------------------------------------------------------- numbers


def fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return format(x, spec)


def scaling_table(run: Run, df: pd.DataFrame) -> pd.DataFrame:
    """Time and memory exponents per backend/device/dtype/mode: the benchmark's own, else fitted here."""
    given = run.extra("scaling")
    if given:
        return pd.DataFrame(given)
    ops = plots.op_rows(df)
    if ops.empty or "peak_mem_bytes" not in ops:
        return pd.DataFrame()
    ops = ops.assign(median_s=ops["median_s"] if "median_s" in ops else ops["stats_median"])
    rows = scaling.scaling_table(ops.to_dict("records"))
    return pd.DataFrame(rows)


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
    il = plots.interleaved_rows(df)
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
    scal = scaling_table(run, df)
    il = labelled_interleaved_rows(df)
    ttt = plots.ttt_rows(df)
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
            row["correctness"] = f"{verdict}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
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


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    il = labelled_interleaved_rows(df)
    if il.empty:
        return il
    il = il.assign(cell=il.apply(speedup_cell, axis=1))
    order = il.sort_values(["device", "dtype", "mode", "T"])["where"].unique()
    t = il.pivot_table(index="backend", columns="where", values="cell", aggfunc="first")[order]
    return t.rename_axis(columns=None).reset_index()


def op_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per device/dtype/mode: median time (ms) per backend x T."""
    ops = plots.op_rows(df)
    out = []
    for (device, dtype, mode), g in ops.groupby(["device", "dtype", "mode"]):
        t = g.pivot_table(index="backend", columns="T", values="stats_median", aggfunc="first") * 1e3
        t.columns = [f"T={int(c)}" for c in t.columns]
        t = t.rename_axis(columns=None)
        out.append((f"{device} {dtype} {mode}: median time (ms)", t.map(lambda x: fmt(x, ".3g")).reset_index()))
    return out


def op_largest_T(df: pd.DataFrame) -> pd.DataFrame:
    ops = plots.op_rows(df)
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
        "first_call_s": ".3g",
        "tokens_per_s": ".3g",
        "flop_per_s": ".3g",
        "fraction_of_peak": ".2%",
        "peak_mem_bytes": ".3g",
        "score_matrix_bytes": ".3g",
    }
    t = top[[c for c in cols if c in top]].sort_values(["device", "dtype", "mode", "backend"])
    for c, spec in cols.items():
        if spec and c in t:
            t[c] = t[c].map(lambda x, s=spec: fmt(int(x) if s == "d" else x, s) if pd.notna(x) else "—")
    return t.rename(columns={"stats_median": "median s", "first_call_s": "first call s"})


def model_table(df: pd.DataFrame) -> pd.DataFrame:
    m = df[df["kind"].isin(["train_step", "generate"])]
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


def ttt_table(df: pd.DataFrame) -> pd.DataFrame:
    ttt = plots.ttt_rows(df)
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


# -------------------------------------------------------------------------------------------- document


class Doc:
    """A tiny document (headings, text, tables, images, code) rendered to both Markdown and HTML."""

    def __init__(self, out: Path):
        self.out, self.blocks = out, []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def table(self, df: pd.DataFrame, empty: str = "(no data)"):
        self.blocks.append(("table", df) if df is not None and not df.empty else ("p", empty))

    def img(self, path: Path | None, alt: str, empty: str):
        self.blocks.append(("img", path.name, alt) if path else ("p", empty))

    def markdown(self) -> str:
        parts = []
        for b in self.blocks:
            if b[0] == "h":
                parts.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                parts.append(b[1])
            elif b[0] == "code":
                parts.append("```\n" + b[1] + "\n```")
            elif b[0] == "table":
                parts.append(md_table(b[1]))
            else:
                parts.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        parts = []
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{inline_html(b[1])}</p>")
            elif b[0] == "code":
                parts.append(f"<pre>{html.escape(b[1])}</pre>")
            elif b[0] == "table":
                parts.append(b[1].to_html(index=False, escape=True, border=0, classes="t"))
            else:
                data = base64.b64encode((self.out / b[1]).read_bytes()).decode()
                parts.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}"></figure>')
        return HTML_PAGE.format(title=html.escape(title), body="\n".join(parts))


def inline_html(text: str) -> str:
    """Markdown `code` spans and **bold** to HTML, everything else escaped."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<b>{s}</b>" if j % 2 else s for j, s in enumerate(bold)))
    return "".join(out)


def md_table(df: pd.DataFrame) -> str:
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1300px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
table.t {{ border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.2em; }}
table.t th, table.t td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; }}
table.t th {{ background: #f0f0f0; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }}
img {{ max-width: 100%; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }}
</style></head>
<body>
{body}
</body></html>
"""


# ------------------------------------------------------------------------------------------------ build


def build_in_place(run_dir: Path) -> Path:
    """Write the derived files of `run_dir` from its raw inputs; returns report.md's path."""
    run = load_run(run_dir)
    df = run.results
    out = Path(run_dir)
    df.to_csv(out / "results.csv", index=False)
    info, env = run.run_info, run.env
    title = f"attnbench report: {info.get('name', out.name)}"
    doc = Doc(out)
    doc.h(1, title)
    gpu = ", ".join(env.get("gpu") or []) or "no GPU"
    doc.p(
        f"Run {info.get('started', '?')} on **{env.get('cpu_model', '?')}** ({env.get('cpu_count', '?')} cores, "
        f"{env.get('torch_threads', '?')} torch threads; {gpu}), torch {env.get('torch', '?')}, "
        f"commit `{(env.get('git') or {}).get('commit') or '?'}`"
        + (" (uncommitted changes)" if (env.get("git") or {}).get("dirty") else "")
        + f". Wall time {fmt(info.get('wall_seconds'), '.0f')} s."
    )
    doc.h(2, "Stages")
    stages = pd.DataFrame(info.get("stages", []))
    doc.table(
        stages[[c for c in ("stage", "status", "seconds", "detail") if c in stages]] if not stages.empty else stages,
        "(no stage record: report built from benchmark JSON only)",
    )
    failed = [s["stage"] for s in info.get("stages", []) if s.get("status") not in ("ok", "skipped")]
    if failed:
        doc.p(
            f"**Failed stages: {', '.join(failed)}** — the sections fed by them are empty or partial; "
            "see the stage logs in `logs/`."
        )
    if run.problems:
        doc.p("Missing or unreadable inputs: " + "; ".join(run.problems))

    doc.h(2, "Verdict per backend")
    doc.table(verdict_table(run, df))
    doc.p(
        "correctness: equivalence/property tests of `tests/` for this backend (worst error / bound: the largest "
        "max|out − ref64| over its bound, ratio < 1 passes); causality: the tests with 'causal' in their name; "
        "supports: the device/dtype pairs the backend declares it can run (the others, with the reason, below); "
        "speed-up: interleaved median over the "
        "baseline at the largest T, [p25–p75] spread; memory class: fitted exponent of peak memory against T; "
        "to target: training seconds and steps to the target validation loss."
    )
    doc.h(3, "Unsupported combinations")
    doc.table(unsupported_table(run), "(none recorded)")
    corr = summarize(run.correctness, list(df["backend"].dropna().unique()) + info.get("backends", []))
    if not corr.empty and (corr["failed"] > 0).any():
        doc.h(3, "Correctness failures")
        doc.table(corr[corr["failed"] > 0][["failed", "first_failure"]].reset_index())
    totals = (run.correctness or {}).get("totals")
    if totals:
        doc.p(
            f"Whole correctness suite: {totals['passed']} passed, {totals['failed']} failed, "
            f"{totals['skipped']} skipped."
        )

    doc.h(2, "Speed-up (interleaved)")
    doc.table(speedup_table(df), "(no interleaved rows)")
    cpu_il = plots.interleaved_rows(df)
    cpu_il = cpu_il[cpu_il["device"] == "cpu"] if "threads" in cpu_il else cpu_il.iloc[0:0]
    if not cpu_il.empty:
        n = ", ".join(str(int(t)) for t in sorted(cpu_il["threads"].dropna().unique()))
        doc.p(
            f"CPU ratios were timed with {n} thread(s) (`--bench-interleaved-threads`); "
            "op and model rows use the thread count in the header."
        )
    doc.img(plots.speedup_vs_T(df, out / "speedup.png"), "speed-up against T", "(no interleaved rows to plot)")

    doc.h(2, "Op-level time and throughput")
    doc.img(plots.time_vs_T(df, out / "time_vs_T.png"), "time and tokens/s against T", "(no op rows to plot)")
    for caption, t in op_tables(df):
        doc.h(4, caption)
        doc.table(t)
    doc.h(4, "At the largest T")
    doc.table(op_largest_T(df), "(no op rows)")
    peak = run.extra("peak_flop_per_s")
    if peak:
        doc.p(f"Measured matmul peak of this machine: {peak:.3g} FLOP/s (fraction_of_peak is relative to it).")

    doc.h(2, "Memory")
    doc.img(plots.memory_vs_T(df, out / "memory_vs_T.png"), "peak memory against T", "(no memory rows to plot)")
    doc.table(scaling_table(run, df).round(3), "(no scaling fit)")

    doc.h(2, "Model level: training step and generation")
    doc.table(model_table(df), "(no model-level rows)")

    doc.h(2, "Training to target")
    doc.table(ttt_table(df), "(no training-to-target rows)")
    agreement = run.extra("curve_agreement")
    if agreement:
        doc.code(json.dumps(agreement, indent=1))
    doc.img(plots.loss_curves(df, out / "loss_curves.png"), "loss curves", "(no loss curves)")
    doc.img(plots.time_to_target(df, out / "time_to_target.png"), "time to target", "(no time-to-target rows)")

    doc.h(2, "Attention heat maps")
    heat = run.heatmap
    if heat:
        doc.p(
            f"Prompt `{heat.get('prompt', '')!r}`, layer {heat.get('layer')} of the model trained in this run "
            f"({heat.get('model', '')}). Max |P − P_{heat.get('reference')}| over all heads and positions:"
        )
        diffs = pd.DataFrame(
            [
                {"backend": k, f"max abs diff vs {heat.get('reference')}": f"{v:.2e}"}
                for k, v in heat.get("max_abs_diff_vs_reference", {}).items()
            ]
            + [
                {"backend": k, f"max abs diff vs {heat.get('reference')}": f"skipped: {v}"}
                for k, v in heat.get("skipped", {}).items()
            ]
        )
        doc.table(diffs)
    doc.img(plots.heatmaps(heat, out / "heatmaps.png"), "attention heat maps", "(no heat map: stage did not run)")

    doc.h(2, "Repeat this run")
    doc.code(info.get("command", "(command not recorded)"))
    if info.get("config"):
        doc.code(json.dumps(info["config"], indent=1))
    doc.h(3, "Environment")
    flat_env = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in env.items()}
    doc.table(pd.DataFrame({"key": list(flat_env), "value": list(flat_env.values())}), "(env.json missing)")
    doc.p(
        "Files: `results.csv` (one row per measurement), the raw pytest-benchmark JSON (`bench_*.json`), "
        "`correctness.xml`, `env.json`, `run.json`, `heatmap.json`, `logs/`."
    )

    (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
    (out / "report.html").write_text(doc.html(title), encoding="utf-8")
    return out / "report.md"


def swap_in(new: Path, final: Path) -> None:
    """Put directory `new` at `final`; an existing `final` is replaced only once `new` is complete."""
    if not final.exists():
        os.rename(new, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


def regen(run_dir: str | Path) -> Path:
    """Rebuild the derived files of a saved run from its JSON, atomically: the old report stays intact until
    the new one is complete (built in a copy, then swapped in)."""
    run_dir = Path(run_dir)
    load_run(run_dir, strict=True)  # fail early, naming a missing/empty/truncated file, before copying anything
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.regen-"))
    os.chmod(tmp, 0o755)
    try:
        shutil.copytree(run_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*OUTPUTS, "*.png"))
        build_in_place(tmp)
        swap_in(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir / "report.md"
