"""The report's PNG plots (matplotlib, Agg). Each function returns the file it wrote, or None without data."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..schema import select  # noqa: E402

DPI = 80  # small PNGs: the report is committed


def _label(row_keys: tuple, multi: bool) -> str:
    backend, device, dtype = row_keys
    return f"{backend} ({device} {dtype})" if multi else str(backend)


def _log2_x(ax) -> None:
    """log-scale T axis labelled 128, 256, ... rather than 2^7, 2^8."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())


def _grid_and_legend(ax, which: str = "major") -> None:
    ax.grid(True, which=which, alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def time_vs_T(df: pd.DataFrame, path: Path) -> Path | None:
    """Median (warm) time and tokens/s against T, log-log, one line per backend; one column per mode; eager
    rows only (CUDA-graph rows are in the tables)."""
    ops = select(df, "op")
    if "timing" in ops:
        ops = ops[ops["timing"].fillna("eager") == "eager"]
    if ops.empty:
        return None
    modes = sorted(ops["mode"].dropna().unique()) or [None]
    multi = ops.groupby(["device", "dtype"]).ngroups > 1
    fig, axes = plt.subplots(2, len(modes), figsize=(5.5 * len(modes), 7), squeeze=False)
    for j, mode in enumerate(modes):
        sub = ops[ops["mode"] == mode] if mode else ops
        for keys, g in sub.groupby(["backend", "device", "dtype"]):
            label = _label(keys, multi)
            axes[0, j].plot(g["T"], g["stats_median"] * 1e3, marker="o", label=label)
            if "tokens_per_s" in g and g["tokens_per_s"].notna().any():
                axes[1, j].plot(g["T"], g["tokens_per_s"], marker="o", label=label)
        axes[0, j].set(title=f"op time ({mode})", ylabel="median time (ms)")
        axes[1, j].set(title=f"throughput ({mode})", ylabel="tokens / s", xlabel="sequence length T")
        for ax in axes[:, j]:
            _log2_x(ax)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def memory_vs_T(df: pd.DataFrame, path: Path) -> Path | None:
    """Peak memory against T per backend (forward), with the analytic score-matrix size dashed."""
    ops = select(df, "op")
    if ops.empty or "peak_mem_bytes" not in ops or ops["peak_mem_bytes"].isna().all():
        return None
    fwd = ops[ops["mode"] == "fwd"] if (ops["mode"] == "fwd").any() else ops
    multi = fwd.groupby(["device", "dtype"]).ngroups > 1
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for keys, g in fwd.groupby(["backend", "device", "dtype"]):
        ax.plot(g["T"], g["peak_mem_bytes"] / 2**20, marker="o", label=_label(keys, multi))
    if "score_matrix_bytes" in fwd and fwd["score_matrix_bytes"].notna().any():
        s = fwd.groupby("T")["score_matrix_bytes"].first()
        ax.plot(s.index, s.values / 2**20, "k--", label="B·H·T² score matrix (analytic)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length T",
        ylabel="peak memory (MiB)",
        title=f"peak memory ({fwd['mode'].iloc[0]})",
    )
    _log2_x(ax)
    _grid_and_legend(ax, which="both")
    return _save(fig, path)


def speedup_vs_T(df: pd.DataFrame, path: Path) -> Path | None:
    """Interleaved speed-up over the baseline against T, with the p25..p75 spread as error bars."""
    il = select(df, "interleaved")
    if il.empty:
        return None
    panels = il[["device", "dtype", "mode"]].drop_duplicates().sort_values(["device", "dtype", "mode"])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for j, (device, dtype, mode) in enumerate(panels.itertuples(index=False)):
        ax = axes[0, j]
        sub = il[(il["device"] == device) & (il["dtype"] == dtype) & (il["mode"] == mode)]
        threads = sub["threads"].dropna().unique() if device == "cpu" and "threads" in sub else []
        where = f"{device} {dtype} {mode}" + (f", {int(threads[0])} thread(s)" if len(threads) == 1 else "")
        for backend, g in sub.sort_values("T").groupby("backend"):
            lo, hi = 1 / g["ratio_p75"], 1 / g["ratio_p25"]
            med = g["speedup_median"]
            ax.errorbar(g["T"], med, yerr=[med - lo, hi - med], marker="o", capsize=3, label=backend)
        ax.axhline(1.0, color="k", lw=0.8)
        base = sub["baseline"].dropna().iloc[0] if "baseline" in sub and sub["baseline"].notna().any() else "?"
        ax.set(title=f"speed-up vs {base} ({where})", xlabel="sequence length T", ylabel="speed-up (x, log)")
        ax.set_yscale("log")
        _log2_x(ax)
        _grid_and_legend(ax)
    return _save(fig, path)


def _ttt_rows_with(df: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """The training-to-target rows when there are any and they have `column`, else None."""
    ttt = select(df, "train_to_target")
    return None if ttt.empty or column not in ttt else ttt


def loss_curves(df: pd.DataFrame, path: Path) -> Path | None:
    """Validation loss against step for each backend's training-to-target run, target dashed."""
    ttt = _ttt_rows_with(df, "curve")
    if ttt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for _, r in ttt.iterrows():
        curve = json.loads(r["curve"]) if isinstance(r["curve"], str) else r["curve"]
        if curve:
            steps, losses = zip(*curve, strict=True)
            ax.plot(steps, losses, marker=".", label=f"{r['backend']} ({r.get('device')})")
    ax.axhline(float(ttt["target"].iloc[0]), color="k", ls="--", lw=1, label=f"target {ttt['target'].iloc[0]}")
    ax.set(xlabel="step", ylabel="validation loss", title="training to target: loss curves")
    _grid_and_legend(ax)
    return _save(fig, path)


def time_to_target(df: pd.DataFrame, path: Path) -> Path | None:
    """Seconds of training to reach the target per backend; hatched bars did not reach it."""
    ttt = _ttt_rows_with(df, "train_seconds")
    if ttt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(ttt) + 1.5))
    reached = ttt["reached"].astype(bool)
    bars = ax.barh(
        ttt["backend"].astype(str), ttt["train_seconds"], color=["tab:green" if r else "tab:red" for r in reached]
    )
    for bar, r, steps in zip(bars, reached, ttt["steps"], strict=True):
        if not r:
            bar.set_hatch("//")
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {int(steps)} steps" + ("" if r else " (not reached)"),
            va="center",
            fontsize=8,
        )
    ax.set(xlabel="training seconds to target (evaluation excluded)", title="time to target loss")
    ax.margins(x=0.25)
    return _save(fig, path)


def heatmaps(heat: dict, path: Path) -> Path | None:
    """One row per backend, one column per head of the chosen layer; prompt characters on the axes."""
    mats = heat.get("matrices") or {}
    if not mats:
        return None
    names = list(mats)
    H = len(next(iter(mats.values())))
    tokens = [t.replace("\n", "⏎").replace(" ", "␣") for t in heat.get("tokens", [])]
    fig, axes = plt.subplots(len(names), H, figsize=(2.6 * H, 2.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for h in range(H):
            ax = axes[i, h]
            ax.imshow(mats[name][h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(tokens)), tokens, fontsize=5)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
            if h == 0:
                diff = heat.get("max_abs_diff_vs_reference", {}).get(name, float("nan"))
                ax.set_ylabel(f"{name}\nmax|Δ| {diff:.1e}", fontsize=8)
            if i == 0:
                ax.set_title(f"layer {heat.get('layer')} head {h}", fontsize=8)
    return _save(fig, path)
