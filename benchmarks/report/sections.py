"""The report's sections, in order (SECTIONS): each a function that writes its headings, tables, plots and text into
the document from the loaded run. The report is its headline (the run, its stages, the verdict, the interleaved
speed-ups), then each stage's own sections in the order of schema.STAGES, then how to repeat the run: a stage's
section is one function here, named in the stage's line of schema.STAGES."""

from __future__ import annotations

import json

import pandas as pd

from ..schema import PLOTS, STAGES, Run, select
from . import plots
from .document import Doc
from .tables import (
    WINDOW_GOAL,
    capability_table,
    feature_scaling_table,
    feature_table,
    fmt,
    model_table,
    op_largest_T,
    op_tables,
    roofline_table,
    scaling_table,
    side_by_side_table,
    speedup_table,
    summarize,
    ttt_table,
    unsupported_table,
    verdict_table,
)


def title(run: Run) -> str:
    return f"attnbench report: {run.run_info.get('name', run.path.name)}"


def header(doc: Doc, run: Run) -> None:
    """The title and where, when and on what the run ran."""
    info, env = run.run_info, run.env
    doc.h(1, title(run))
    gpu = ", ".join(env.get("gpu") or []) or "no GPU"
    doc.p(
        f"Run {info.get('started', '?')} on **{env.get('cpu_model', '?')}** ({env.get('cpu_count', '?')} cores, "
        f"{env.get('torch_threads', '?')} torch threads; {gpu}), torch {env.get('torch', '?')}, "
        f"commit `{(env.get('git') or {}).get('commit') or '?'}`"
        + (" (uncommitted changes)" if (env.get("git") or {}).get("dirty") else "")
        + f". Wall time {fmt(info.get('wall_seconds'), '.0f')} s."
    )


def stages(doc: Doc, run: Run) -> None:
    """Each stage of the run: status, seconds, detail; the failed ones named."""
    info = run.run_info
    doc.h(2, "Stages")
    table = pd.DataFrame(info.get("stages", []))
    doc.table(
        table[[c for c in ("stage", "status", "seconds", "detail") if c in table]] if not table.empty else table,
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


def verdict(doc: Doc, run: Run) -> None:
    """Per backend: correctness, causality, support, speed-up, memory class, time to target; then the unsupported
    combinations, the capability matrix and the correctness failures."""
    df = run.results
    info = run.run_info
    doc.h(2, "Verdict per backend")
    doc.table(verdict_table(run, df))
    doc.p(
        "correctness: equivalence/property tests of `tests/` for this backend (worst error / bound: the largest "
        "max|out − ref64| over its bound, ratio < 1 passes); causality: the tests of the causality family; "
        "supports: the device/dtype pairs the backend declares it can run (the others, with the reason, below); "
        "speed-up: interleaved median over the "
        "baseline at the largest T, [p25–p75] spread; memory class: fitted exponent of peak memory against T; "
        "to target: training seconds and steps to the target validation loss."
    )
    doc.h(3, "Unsupported combinations")
    doc.table(unsupported_table(run), "(none recorded)")
    doc.h(3, "Capabilities: contract features per backend and device")
    doc.table(capability_table(run), "(not recorded in this run)")
    doc.p(
        "yes: the backend implements the feature there, and the conformance suite holds it to it; otherwise the "
        "backend's reason (the suite, the feature benchmarks and the GQA + window training skip it with it)."
    )
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


def speedup(doc: Doc, run: Run) -> None:
    """The interleaved speed-up ratios against the baseline, their plot and how they were timed."""
    df = run.results
    out = run.path
    doc.h(2, "Speed-up (interleaved)")
    doc.table(speedup_table(df), "(no interleaved rows)")
    doc.p(
        "The headline ratios (this table and the verdict's speed-up) use **warm** timings: each backend's call "
        "repeated on inputs the previous call left in the caches, as in a training loop. The op tables below "
        "give warm and cold (caches flushed before every call) side by side."
    )
    cpu_il = select(df, "interleaved")
    cpu_il = cpu_il[cpu_il["device"] == "cpu"] if "threads" in cpu_il else cpu_il.iloc[0:0]
    if not cpu_il.empty:
        n = ", ".join(str(int(t)) for t in sorted(cpu_il["threads"].dropna().unique()))
        doc.p(
            f"CPU ratios were timed with {n} thread(s) (`--bench-interleaved-threads`); "
            "op and model rows use the thread count in the header."
        )
    doc.img(plots.speedup_vs_T(df, out / PLOTS["speedup"]), "speed-up against T", "(no interleaved rows to plot)")


def op_level(doc: Doc, run: Run) -> None:
    """Op-level time and throughput per T, the largest T, the measured peaks and the roofline."""
    df = run.results
    out = run.path
    doc.h(2, "Op-level time and throughput")
    doc.img(plots.time_vs_T(df, out / PLOTS["time_vs_T"]), "time and tokens/s against T", "(no op rows to plot)")
    for caption, t in op_tables(df):
        doc.h(4, caption)
        doc.table(t)
    doc.h(4, "At the largest T")
    doc.table(op_largest_T(df), "(no op rows)")
    peak = run.extra("peak_flop_per_s")
    if peak:
        doc.p(f"Measured matmul peak of this machine: {peak:.3g} FLOP/s (fraction_of_peak is relative to it).")
    bandwidth = run.extra("bandwidth_bytes_per_s_by")
    if bandwidth:
        doc.p(
            "Measured memory bandwidth (a large copy, read + write): "
            + ", ".join(f"{dev} {bw:.3g} B/s" for dev, bw in bandwidth.items())
            + " (fraction_of_bandwidth is relative to it)."
        )
    doc.h(3, "Roofline")
    doc.p(
        "Each row's FLOPs over its minimum bytes moved (q, k, v, out; for fwd+bwd also dO, dq, dk, dv) is its "
        "arithmetic intensity; below the ridge point (matmul peak / bandwidth) the memory roof binds, above it "
        "the compute roof. roofline min s is the faster of the two roofs allows. Warm times answer to the matmul "
        "peak, cold times to the bandwidth (warm calls may read from cache). integrity: `ok`, or why the row was "
        "rejected (a result that differs from the float64 reference on fresh inputs, or a time the roofline "
        "rules out); a rejected row also fails its benchmark test."
    )
    doc.table(roofline_table(df), "(no roofline columns: run from before cold timing)")


def memory(doc: Doc, run: Run) -> None:
    """Peak memory against T and the fitted scaling exponents."""
    df = run.results
    out = run.path
    doc.h(2, "Memory")
    doc.img(plots.memory_vs_T(df, out / PLOTS["memory_vs_T"]), "peak memory against T", "(no memory rows to plot)")
    doc.table(scaling_table(run).round(3), "(no scaling fit)")


def feature_sweep(doc: Doc, run: Run) -> None:
    """GQA and sliding-window timings (bench_features.json) and their scaling against the goal."""
    df = run.results
    doc.h(2, "Feature sweep: grouped-query attention and a sliding window")
    features = feature_table(df)
    doc.p(
        "From `bench_features.json` (its own command, too long for the main job: see the README's Benchmarks). "
        "GQA 8:1 and 4:1 (8 query heads over 1 or 2 key/value heads) and a 256-key sliding window (4 heads), "
        "B=1, D=64, each configuration timed interleaved against dense-masked SDPA (the math kernel with the "
        "window as a (T, T) boolean mask). FLOP/s count only the visible (query, key) pairs. "
        f"Goal: a window's work grows linearly in T, so {WINDOW_GOAL[0]}'s windowed time exponent should be "
        f"<= {WINDOW_GOAL[1]} (the goal column)."
        if not features.empty
        else "(not measured in this run: `bench_features.json` absent; see the README's Benchmarks)"
    )
    if not features.empty:
        doc.table(feature_scaling_table(run), "(no fit: fewer than 2 sequence lengths)")
        doc.table(features)


def model_level(doc: Doc, run: Run) -> None:
    """The GPT's training step and generation, and the nanoGPT side-by-side."""
    df = run.results
    doc.h(2, "Model level: training step and generation")
    doc.table(model_table(df), "(no model-level rows)")
    doc.table(side_by_side_table(df), "(no nanoGPT side-by-side: attnbench run --nanogpt PATH to add it)")


def training_to_target(doc: Doc, run: Run) -> None:
    """Time and steps to the target loss, curve agreement, loss curves."""
    df = run.results
    out = run.path
    doc.h(2, "Training to target")
    doc.table(ttt_table(df), "(no training-to-target rows)")
    agreement = run.extra("curve_agreement")
    if agreement:
        doc.code(json.dumps(agreement, indent=1))
    doc.img(plots.loss_curves(df, out / PLOTS["loss_curves"]), "loss curves", "(no loss curves)")
    doc.img(plots.time_to_target(df, out / PLOTS["time_to_target"]), "time to target", "(no time-to-target rows)")


def heatmaps(doc: Doc, run: Run) -> None:
    """The attention heat maps of each backend and their largest difference from the reference."""
    out = run.path
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
    doc.img(plots.heatmaps(heat, out / PLOTS["heatmaps"]), "attention heat maps", "(no heat map: stage did not run)")


def repeat_this_run(doc: Doc, run: Run) -> None:
    """The command and configuration that repeat the run, the environment and the files."""
    info = run.run_info
    env = run.env
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


SECTIONS = [
    header,
    stages,
    verdict,
    speedup,  # the headline: the run, its stages, the verdict per backend, the interleaved speed-ups
    *(globals()[name] for stage in STAGES for name in stage.sections),  # each stage's own, in the order of STAGES
    repeat_this_run,
]  # the report, top to bottom
