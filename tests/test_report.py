"""Reports: build from a synthetic pytest-benchmark run, compare two runs, bad input, atomic writes."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from attnbench.bench.cli import main as cli
from attnbench.bench.measuring import heatmap
from attnbench.bench.measuring.scaling import scaling_table
from attnbench.bench.options import DEVICE_DEFAULTS, RunConfig
from attnbench.bench.report import build, compare, plots, sections, tables
from attnbench.bench.schema import ReportInputError, load_benchmark_json

BACKENDS = ["manual", "per_head_loop", "sdpa"]
SPEED = {"manual": 1.0, "per_head_loop": 1.6, "sdpa": 0.5}  # relative op time of each synthetic backend


def bench(extra: dict, median: float, noise: float, rng: random.Random) -> dict:
    """One pytest-benchmark entry in the agreed schema; `noise` is the relative spread of the rounds."""
    rounds = [median * (1 + rng.gauss(0, noise)) for _ in range(15)]
    rounds.sort()
    med = rounds[7]
    name = f"test_{extra['kind']}[{extra['backend']}-{extra.get('mode', '')}-{extra.get('T', '')}]"
    stats = {
        "min": rounds[0],
        "max": rounds[-1],
        "mean": sum(rounds) / 15,
        "stddev": noise * median,
        "median": med,
        "q1": rounds[3],
        "q3": rounds[11],
        "iqr": rounds[11] - rounds[3],
        "rounds": 15,
        "iterations": 1,
        "ops": 1 / med,
        "total": sum(rounds),
    }
    return {
        "group": extra["kind"],
        "name": name,
        "fullname": f"benchmarks/x.py::{name}",
        "params": {},
        "extra_info": extra,
        "stats": stats,
    }


def synthetic_run(tmp: Path, seed: int = 0, noise: float = 0.01, slow: dict | None = None) -> Path:
    """A run directory like `attnbench run` writes; `slow` multiplies one backend's times (injected regression)."""
    rng, slow = random.Random(seed), slow or {}
    tmp.mkdir(parents=True, exist_ok=True)
    B, H, D = 2, 4, 32
    ops, inter, model, ttt = [], [], [], []
    for b in BACKENDS:
        f = SPEED[b] * slow.get(b, 1.0)
        for mode, m in (("fwd", 1.0), ("fwd+bwd", 3.5)):
            for T in (128, 256, 512, 1024):
                t = 1e-4 * f * m * (T / 128) ** 2
                mem = B * H * T * T * 4 * (1.0 if b != "sdpa" else 128 / T) + 1e5
                e = dict(
                    kind="op",
                    backend=b,
                    device="cpu",
                    dtype="float32",
                    B=B,
                    H=H,
                    T=T,
                    D=D,
                    mode=mode,
                    median_s=t,
                    first_call_s=2 * t,
                    tokens_per_s=B * T / t,
                    flops=2.0 * B * H * T * T * D,
                    flop_per_s=2.0 * B * H * T * T * D / t,
                    peak_flop_per_s=1e11,
                    fraction_of_peak=2.0 * B * H * T * T * D / t / 1e11,
                    peak_mem_bytes=mem,
                    score_matrix_bytes=B * H * T * T * 4,
                )
                ops.append(bench(e, t, noise, rng))
                r = f / SPEED["manual"]
                e = dict(
                    kind="interleaved",
                    backend=b,
                    device="cpu",
                    dtype="float32",
                    mode=mode,
                    T=T,
                    B=B,
                    H=H,
                    D=D,
                    baseline="manual",
                    ratio_median=r,
                    ratio_p25=r * (1 - 2 * noise),
                    ratio_p75=r * (1 + 2 * noise),
                    speedup_median=1 / r,
                    rounds=21,
                )
                inter.append(bench(e, t, noise, rng))
        for kind, use_cache in (("train_step", None), ("generate", True), ("generate", False)):
            t = 0.02 * f * (0.5 if use_cache else 1.0)
            e = dict(kind=kind, backend=b, device="cpu", dtype="float32", B=8, T=64, tokens_per_s=512 / t, median_s=t)
            if use_cache is not None:
                e["use_cache"] = use_cache
            model.append(bench(e, t, noise, rng))
        steps = 300
        curve = [[s, 4.2 * math.exp(-s / 150) + 1.9] for s in range(0, steps + 1, 50)]
        secs = 30.0 * f
        e = dict(
            kind="train_to_target",
            backend=b,
            device="cpu",
            dtype="float32",
            target=2.1,
            reached=True,
            steps=steps,
            train_seconds=secs,
            eval_seconds=3.0,
            final_val_loss=curve[-1][1],
            curve=curve,
            leak_flag=False,
            leak_floor=1.0,
            recipe={"n_layer": 2, "lr": 3e-3},
        )
        ttt.append(bench(e, secs, 0.0, rng))
    # the op session fits the exponents from its rows (conftest's JSON summary): the report only shows them
    fits = scaling_table([b["extra_info"] for b in ops])
    top = {"attnbench": {"peak_flop_per_s": 1e11, "scaling": fits}}
    for name, rows in (
        ("bench_ops", ops),
        ("bench_interleaved", inter),
        ("bench_model", model),
        ("bench_train_to_target", ttt),
    ):
        doc = {
            "machine_info": {"cpu": {"brand_raw": "synthetic"}},
            "commit_info": {},
            "benchmarks": rows,
            "datetime": "2026-01-01T00:00:00",
            "version": "5.2.0",
            **top,
        }
        (tmp / f"{name}.json").write_text(json.dumps(doc))
    support = {b: {"cpu float32": None, "cuda float16": "needs CUDA"} for b in BACKENDS}
    stages = [{"stage": s, "status": "ok", "seconds": 1.0, "detail": ""} for s in ("bench_ops", "correctness")]
    info = {
        "name": tmp.name,
        "command": "attnbench run --quick",
        "config": {"quick": True},
        "backends": BACKENDS,
        "support": support,
        "forward_only": {BACKENDS[0]: {"cpu": "an inference runtime", "cuda": "an inference runtime"}},
        "stages": stages,
        "wall_seconds": 100.0,
        "started": "2026-01-01 00:00:00",
    }
    (tmp / "run.json").write_text(json.dumps(info))
    (tmp / "env.json").write_text(json.dumps({"torch": torch.__version__, "cpu_model": "synthetic", "git": {}}))
    cases = "".join(
        f'<testcase classname="tests.test_equivalence" name="test_forward[{b}-float32]" time="0.1"><properties>'
        f'<property name="backend" value="{b}"/><property name="max_err" value="{1e-7 * (i + 1)}"/>'
        f'<property name="bound" value="1e-6"/></properties></testcase>'
        f'<testcase classname="tests.test_causality" name="test_future_does_not_leak[{b}]" time="0.1"/>'
        for i, b in enumerate(BACKENDS)
    )
    (tmp / "correctness.xml").write_text(
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>'
    )
    return tmp


def test_a_declared_departure_is_counted_apart_from_passes_and_skips(tmp_path):
    # An expected failure (pytest's xfail: a backend's declared departure, seen) is neither a skip nor a pass; the
    # verdict counts it as a declared departure beside them.
    run = synthetic_run(tmp_path / "r1")
    xfail = (
        '<testcase classname="tests.conformance.test_nan_contract" name="test_nan_contract[manual-cpu]" time="0.1">'
        '<properties><property name="backend" value="manual"/><property name="property" value="nan_contract"/>'
        '</properties><skipped type="pytest.xfail" message="manual (declared; seen: spreads a NaN in value)"/>'
        "</testcase>"
    )
    xml = (run / "correctness.xml").read_text().replace("</testsuite>", xfail + "</testsuite>")
    (run / "correctness.xml").write_text(xml)
    verdict = build.build_in_place(run).read_text().split("## Verdict per backend")[1].split("###")[0]
    assert "| manual | PASS: 2 passed, 0 failed, 0 skipped, 1 declared departures |" in verdict


def test_build_report_from_synthetic_run(tmp_path):
    run = synthetic_run(tmp_path / "r1")
    md_path = build.build_in_place(run)
    md = md_path.read_text()
    for section in ("Verdict per backend", "Speed-up (interleaved)", "Memory", "Training to target", "Repeat this run"):
        assert f"## {section}" in md
    assert "attnbench run --quick" in md
    # the verdict names every backend, with passing correctness and the memory classes the data implies
    verdict = md.split("## Verdict per backend")[1].split("###")[0]
    for b in BACKENDS:
        assert f"| {b} |" in verdict
    assert "PASS: 2 passed, 0 failed" in verdict and "3.00e-07 / 1.00e-06 (0.30)" in verdict
    assert "quadratic (T^1.9" in verdict and "linear (T^0.9" in verdict  # sdpa's synthetic memory grows as T
    assert "2.00x" in verdict  # sdpa at half of manual's time
    assert "| none on cpu, cuda: an inference runtime |" in verdict and verdict.count("| yes |") == len(BACKENDS) - 1
    for png in ("time_vs_T.png", "memory_vs_T.png", "loss_curves.png", "time_to_target.png", "speedup.png"):
        assert (run / png).stat().st_size > 1000
        assert f"]({png})" in md
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and 'src="time_vs_T.png"' not in html
    csv = pd.read_csv(run / "results.csv")
    assert len(csv) == 3 * 8 + 3 * 8 + 3 * 3 + 3  # one row per measurement
    assert {"kind", "backend", "T", "mode", "stats_median", "speedup_median", "recipe_lr"} <= set(csv.columns)


def test_regen_cli_rebuilds_from_json(tmp_path):
    run = synthetic_run(tmp_path / "r1")
    assert cli(["regen", str(run)]) == 0
    first = (run / "report.md").read_text()
    (run / "report.md").unlink()
    assert cli(["regen", str(run)]) == 0
    assert (run / "report.md").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]  # no leftover temp dirs


def test_compare_flags_injected_slowdown_only(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a", seed=1)
    slow = synthetic_run(tmp_path / "slow", seed=2, slow={"per_head_loop": 1.3})
    m = compare.compare(a, slow, threshold=0.1)
    flagged = m[m["regression"]]
    assert set(flagged["backend"]) == {"per_head_loop"} and set(flagged["kind"]) == {"interleaved"}  # drift-free
    assert set(m[m["worse"]]["backend"]) == {"per_head_loop"}
    assert set(m[m["worse"]]["kind"]) == {"op", "train_step", "generate", "train_to_target", "interleaved"}
    gated = compare.compare(a, slow, threshold=0.1, gate_absolute=True)
    assert set(gated[gated["regression"]]["kind"]) == set(m[m["worse"]]["kind"])
    assert cli(["compare", str(a), str(slow), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSIONS: " in out
    assert "largest change of a ratio to the baseline: +30.0% (per_head_loop cpu" in out
    assert cli(["compare", str(a), str(slow)]) == 0  # flagged, but not asked to fail


@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_compare_does_not_flag_identical_or_noisy_runs(tmp_path, noise):
    a = synthetic_run(tmp_path / "a", seed=1, noise=noise)
    b = synthetic_run(tmp_path / "b", seed=1 if noise == 0 else 7, noise=noise)
    m = compare.compare(a, b, threshold=0.1)
    assert not m["worse"].any() and not m["regression"].any() and (m["only_in"] == "").all()
    assert cli(["compare", str(a), str(b), "--fail-on-regression"]) == 0


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_bad_json_names_the_file(tmp_path, damage, capsys):
    run = synthetic_run(tmp_path / "r1")
    f = run / "bench_ops.json"
    if damage == "missing":
        f.unlink()
        with pytest.raises(ReportInputError, match="bench_ops.json: file does not exist"):
            load_benchmark_json(f)
    elif damage == "empty":
        f.write_text("")
    else:
        f.write_text(f.read_text()[:500])
    if damage != "missing":
        with pytest.raises(
            ReportInputError, match=f"bench_ops.json: .*{'empty' if damage == 'empty' else 'truncated'}"
        ):
            load_benchmark_json(f)
        assert cli(["regen", str(run)]) == 2
        assert "bench_ops.json" in capsys.readouterr().err
    assert cli(["compare", str(f), str(run / "bench_model.json")]) == 2
    assert "bench_ops.json" in capsys.readouterr().err


def test_interrupted_regen_leaves_earlier_report_intact(tmp_path, monkeypatch):
    run = synthetic_run(tmp_path / "r1")
    build.regen(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sections.plots, "loss_curves", interrupted)  # Ctrl-C in the middle of writing plots
    with pytest.raises(KeyboardInterrupt):
        build.regen(run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


def test_interrupted_run_leaves_earlier_reports_intact(tmp_path, monkeypatch):
    from attnbench.bench.job import main_job

    earlier = synthetic_run(tmp_path / "reports" / "earlier")
    build.build_in_place(earlier)
    before = sorted(p.name for p in earlier.iterdir())

    def interrupted(self, stage, bar):
        raise KeyboardInterrupt

    monkeypatch.setattr(main_job.Job, "bench_stage", interrupted)
    cfg = RunConfig(backends=["manual"], name="new", out_dir=str(tmp_path / "reports"))
    assert main_job.Job(cfg, "attnbench run").run() == 130
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["earlier"]
    assert sorted(p.name for p in earlier.iterdir()) == before


def test_each_stage_is_declared_once_with_its_files_and_report_sections():
    """schema.STAGES, in order, gives the main job's stages, the benchmark files the report reads (those of a
    command of their own after the main job's) and the report: its headline, each stage's sections, the tail."""
    from attnbench.bench import schema
    from attnbench.bench.job import main_job

    ran = ["bench_ops", "bench_interleaved", "bench_model", "bench_train_to_target", "correctness", "heatmap"]
    assert [spec.name for spec in main_job.Job(RunConfig(), "attnbench run").plan()] == ran
    assert schema.BENCH_FILES == tuple(f"{s}.json" for s in ran[:4])
    assert schema.OPTIONAL_BENCH_FILES == ("bench_features.json",)
    headline = ["header", "stages", "verdict", "speedup"]
    own = ["op_level", "memory", "feature_sweep", "model_level", "training_to_target", "heatmaps"]
    assert [f.__name__ for f in sections.SECTIONS] == [*headline, *own, "repeat_this_run"]


def test_every_stage_reads_the_one_resolved_plan(tmp_path, monkeypatch):
    """No --backends: the job resolves every registered backend once; run-config.json, the correctness stage's
    --backend values, the heat map and run.json all carry that same list (the benchmarks read run-config.json)."""
    from attnbench import backend_names
    from attnbench.bench.job import main_job

    handed = {}

    def pytest_stage(self, stage, args, bar):
        handed[stage] = args
        return 0

    def heatmap_stage(self, stage, bar):
        handed[stage] = (self.cfg.run_backends, self.cfg.heat_steps)
        return "ok", ""

    monkeypatch.setattr(main_job.Job, "pytest", pytest_stage)
    monkeypatch.setattr(main_job.Job, "heatmap_stage", heatmap_stage)
    main_job.Job(RunConfig(name="plan", quick=True, out_dir=str(tmp_path)), "attnbench run").run()
    plan = RunConfig.read(tmp_path / "plan" / "run-config.json")
    assert plan.backends is None and plan.run_backends == backend_names() and plan.heat_steps == 150
    given = [a.removeprefix("--backend=") for a in handed["correctness"] if a.startswith("--backend=")]
    assert given == backend_names()
    assert all(any(a.startswith("--bench-config=") for a in handed[s]) for s in ("bench_ops", "bench_model"))
    assert handed["heatmap"] == (backend_names(), 150)
    assert json.loads((tmp_path / "plan" / "run.json").read_text())["backends"] == backend_names()
    assert RunConfig(backends=["manual"], heat_steps=7).resolve().run_backends == ["manual"]
    assert plan.ttt_recipe == "quick" and plan.Ts == {d: DEVICE_DEFAULTS[d].quick_Ts for d in plan.devices}


def test_the_plan_resolves_each_stages_defaults_once():
    """attnbench run's T, backends and quick reach every stage: the ratios at the largest three T, the training on
    the backends asked (or the quick recipe's every CPU backend); the resolved plan survives run-config.json."""
    from attnbench.bench.measuring.train_to_target import cpu_backends
    from attnbench.bench.options import FEATURE_TS, POW2, QUICK_INTERLEAVED_T

    full = RunConfig(device="cpu").resolve()
    assert full.devices == ["cpu"] and full.dtypes == {"cpu": ["float32"]} and full.Ts == {"cpu": POW2[:6]}
    assert full.interleaved_Ts == {"cpu": [1024, 2048, 4096]} and full.feature_Ts == FEATURE_TS
    assert full.ttt_backends == ["sdpa", "manual"] and full.ttt_recipe == "fast"
    assert full.heat_steps == 500 and full.heat_device == "cpu"
    quick = RunConfig(device="cpu", quick=True).resolve()
    assert quick.interleaved_Ts == {"cpu": QUICK_INTERLEAVED_T} and quick.feature_Ts == [128, 256]
    assert (quick.ttt_backends, quick.ttt_recipe) == (cpu_backends("cpu"), "quick")
    asked = RunConfig(backends=["manual", "sdpa"], T=[128, 256, 512, 1024], dtype=["bfloat16"], quick=True).resolve()
    assert asked.interleaved_Ts == {d: [256, 512, 1024] for d in asked.devices} and asked.feature_Ts == asked.T
    assert asked.feature_backends == asked.ttt_backends == ["manual", "sdpa"]
    assert asked.dtypes == {d: ["bfloat16"] for d in asked.devices}


def test_the_resolved_plan_round_trips_through_run_config_json(tmp_path):
    plan = RunConfig(backends=["manual"], T=[128, 256], quick=True).resolve()
    plan.write(tmp_path / "run-config.json")
    assert RunConfig.read(tmp_path / "run-config.json") == plan


def test_parse_T():
    from attnbench.bench.options import parse_T

    assert parse_T("128:1024") == [128, 256, 512, 1024]
    assert parse_T("100:300") == [128, 256]
    assert parse_T("64,96") == [64, 96]
    with pytest.raises(ValueError, match="--T"):
        parse_T("big")


@pytest.mark.parametrize("backend", ["manual", "per_head_loop", "sdpa"])
def test_attention_matrix_trick_gives_softmax_weights(backend):
    g = torch.Generator().manual_seed(0)
    for T, D in ((5, 16), (20, 8)):  # padding when D > Tk and when Tk > D
        q, k = torch.randn(2, 3, T, D, generator=g), torch.randn(2, 3, T, D, generator=g)
        P = heatmap.attention_matrix(backend, q, k)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        ref = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        torch.testing.assert_close(P, ref, atol=1e-6, rtol=1e-5)
        assert torch.all(P.triu(1) == 0)  # nothing above the diagonal: causal


def interleaved_row(backend, device, dtype, T, ratio):
    return {"kind": "interleaved", "backend": backend, "device": device, "dtype": dtype, "mode": "fwd+bwd", "T": T,
            "baseline": "manual", "threads": 1, "ratio_median": ratio, "ratio_p25": ratio, "ratio_p75": ratio,
            "speedup_median": 1 / ratio}  # fmt: skip


def test_speedups_of_cpu_and_cuda_never_share_a_cell(tmp_path):
    df = pd.DataFrame(
        [interleaved_row(b, "cpu", "float32", 1024, r) for b, r in (("manual", 1.0), ("sdpa", 0.5))]
        + [interleaved_row(b, "cuda", "bfloat16", 1024, r) for b, r in (("manual", 1.0), ("sdpa", 0.25))]
    )
    t = tables.speedup_table(df).set_index("backend")
    assert t.loc["sdpa", "cpu float32 fwd+bwd T=1024"].startswith("2.00x")
    assert t.loc["sdpa", "cuda bfloat16 fwd+bwd T=1024"].startswith("4.00x")
    one_device = tables.speedup_table(df[df["device"] == "cpu"])
    assert list(one_device.columns) == ["backend", "fwd+bwd T=1024"]  # no prefix when there is one pair
    assert plots.speedup_vs_T(df, tmp_path / "s.png").stat().st_size > 1000


# ------------------------------------------------------------------------------ inputs, gates and leftovers


def test_regen_keeps_every_file_it_does_not_own(tmp_path):
    run = synthetic_run(tmp_path / "r1")
    assert cli(["regen", str(run)]) == 0
    (run / "screenshot.png").write_bytes(b"\x89PNG not ours")
    (run / "notes.txt").write_text("kept")
    assert cli(["regen", str(run)]) == 0
    assert (run / "screenshot.png").read_bytes() == b"\x89PNG not ours" and (run / "notes.txt").read_text() == "kept"
    assert (run / "speedup.png").stat().st_size > 1000  # its own plots are rebuilt


def test_regen_refuses_a_run_missing_the_file_of_a_stage_recorded_ok(tmp_path, capsys):
    run = synthetic_run(tmp_path / "r1")
    assert cli(["regen", str(run)]) == 0
    before = (run / "report.md").read_text()
    (run / "bench_ops.json").unlink()  # run.json records bench_ops as ok
    assert cli(["regen", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bench_ops.json" in err and "missing" in err and len(err.splitlines()) == 1
    assert (run / "report.md").read_text() == before  # the complete report is not replaced by a thinner one


@pytest.mark.parametrize("xml", ["<foo/>", '<?xml version="1.0"?><testsuites><testsuite name="x"/></testsuites>'])
def test_regen_refuses_a_foreign_correctness_xml(tmp_path, capsys, xml):
    run = synthetic_run(tmp_path / "r1")
    (run / "correctness.xml").write_text(xml)
    assert cli(["regen", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "correctness.xml" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "file, damage",
    [
        ("bench_ops.json", lambda d: d["benchmarks"][0]["stats"].update(median="fast")),
        ("bench_ops.json", lambda d: d["benchmarks"][0].update(extra_info=["op"])),
        ("bench_ops.json", lambda d: d["benchmarks"][0]["extra_info"].update(T="big")),
        ("run.json", lambda d: d.update(stages="all ok")),
        ("run.json", lambda d: d.update(support={"manual": "yes"})),
        ("heatmap.json", lambda d: d.update(max_abs_diff_vs_reference={"manual": "0.0"})),
    ],
)
def test_wrong_typed_field_is_one_line_and_exit_2(tmp_path, capsys, file, damage):
    run = synthetic_run(tmp_path / "r1")
    (run / "heatmap.json").write_text(json.dumps({"matrices": {}, "max_abs_diff_vs_reference": {"manual": 0.0}}))
    data = json.loads((run / file).read_text())
    damage(data)
    (run / file).write_text(json.dumps(data))
    assert cli(["regen", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert file in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_compare_fails_when_gated_rows_are_missing_in_b(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a", seed=1)
    b = synthetic_run(tmp_path / "b", seed=1)
    (b / "bench_interleaved.json").unlink()  # the gated ratios are gone
    assert cli(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "MISSING IN B" in out and "per_head_loop" in out
    assert cli(["compare", str(a), str(b)]) == 0  # listed, but not asked to fail


def test_compare_refuses_a_run_without_rows(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a", seed=1)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    assert cli(["compare", str(a), str(empty), "--fail-on-regression"]) == 2
    assert "no benchmark rows" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["nan", "inf", "-0.1"])
def test_compare_refuses_a_bad_threshold(tmp_path, capsys, threshold):
    a = synthetic_run(tmp_path / "a", seed=1)
    assert cli(["compare", str(a), str(a), "--threshold", threshold, "--fail-on-regression"]) == 2
    assert "--threshold" in capsys.readouterr().err


def test_run_removes_the_partial_directories_of_killed_runs(tmp_path, monkeypatch, capsys):
    import subprocess
    import time

    from attnbench.bench.job import main_job

    reports = tmp_path / "reports"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    killed = reports / ".partial-old-abc123"
    killed.mkdir(parents=True)
    (killed / "owner.pid").write_text(str(dead.pid))
    old_unlocked = reports / ".partial-older-def456"  # written before partial directories carried a pid
    old_unlocked.mkdir()
    os.utime(old_unlocked, (time.time() - 2 * 86400,) * 2)
    live = reports / ".partial-running-ghi789"  # a run still going on
    live.mkdir()
    (live / "owner.pid").write_text(str(os.getpid()))
    fresh_unlocked = reports / ".partial-fresh-jkl012"
    fresh_unlocked.mkdir()

    def no_stage(self, stage, bar):
        return "failed", "not run in this test"

    for stage in ("bench_stage", "correctness_stage", "heatmap_stage"):
        monkeypatch.setattr(main_job.Job, stage, no_stage)
    cfg = RunConfig(backends=["manual"], name="new", out_dir=str(reports))
    main_job.Job(cfg, "attnbench run").run()
    left = sorted(p.name for p in reports.iterdir())
    assert left == [".partial-fresh-jkl012", ".partial-running-ghi789", "new"]
    err = capsys.readouterr().err
    assert str(killed) in err and str(old_unlocked) in err and "killed" in err


def test_run_directory_is_absolute_when_out_dir_is_relative(tmp_path, monkeypatch):
    from attnbench.bench.job import main_job

    seen = []

    def record(self, stage, bar):  # the stages run pytest with cwd=<run dir>/scratch: relative paths would break
        seen.append(self.dir)
        return "failed", "not run in this test"

    for stage in ("bench_stage", "correctness_stage", "heatmap_stage"):
        monkeypatch.setattr(main_job.Job, stage, record)
    monkeypatch.chdir(tmp_path)
    main_job.Job(RunConfig(backends=["manual"], name="rel", out_dir="reports"), "attnbench run").run()
    assert seen and all(d.is_absolute() for d in seen)
    assert (tmp_path / "reports" / "rel" / "report.md").is_file()


def test_capability_matrix_says_yes_or_gives_the_backends_reason(tmp_path):
    from attnbench import FEATURES
    from attnbench.bench.job.main_job import feature_matrix, support_matrix

    names = ["chunked", "compiled_manual", "sdpa_flash"]
    m = feature_matrix(names)
    assert all(why is None for why in m["chunked"]["cpu"].values()) and set(m["chunked"]["cpu"]) == set(FEATURES)
    assert m["compiled_manual"]["cpu"]["gqa"] == "compiled_manual does not implement gqa"  # declares nothing
    assert m["sdpa_flash"]["cpu"]["window"] is None  # a declared feature refused on one device only
    assert "takes no attn_mask" in m["sdpa_flash"]["cuda"]["window"]
    run = synthetic_run(tmp_path / "r")
    info = json.loads((run / "run.json").read_text())
    info.update(features=m, support=support_matrix(names))
    (run / "run.json").write_text(json.dumps(info))
    md = build.build_in_place(run).read_text()
    section = md.split("### Capabilities: contract features per backend and device")[1].split("##")[0]
    assert "| chunked | cpu | float32, bfloat16, float16 | yes | yes | yes | yes | yes |" in section
    assert "| compiled_manual | cpu |" in section and "compiled_manual does not implement softcap |" in section


def test_run_checks_the_nanogpt_path_first_and_passes_it_on_absolute(tmp_path, monkeypatch, capsys):
    from attnbench.bench.job import main_job

    seen = []
    monkeypatch.setattr(main_job.Job, "run", lambda self: seen.append(self.cfg) or 0)
    monkeypatch.chdir(tmp_path)
    assert cli(["run", "--nanogpt", "nowhere"]) == 2  # before any stage runs: one line naming the path
    assert "no nanoGPT model.py at nowhere" in capsys.readouterr().err and not seen
    (tmp_path / "ng").mkdir()
    (tmp_path / "ng" / "model.py").write_text("class GPT: ...\nclass GPTConfig: ...\n")
    assert cli(["run", "--nanogpt", "ng"]) == 0
    assert seen[0].nanogpt == str(tmp_path / "ng")  # the stages run in another directory


def test_progress_without_a_terminal_is_one_short_line_per_tenth_of_a_stage(tmp_path, capsys):
    """In a CI log the bar is off: a stage of 40 tests prints 10 lines of progress, none of them a redrawn bar."""
    from attnbench.bench.job.main_job import Follower
    from tqdm.auto import tqdm

    progress = tmp_path / "stage.progress"
    records = [{"total": 40}] + [{"test": f"test_{i}[{'x' * 300}]", "outcome": "passed"} for i in range(40)]
    progress.write_text("".join(json.dumps(r) + "\n" for r in records))
    with tqdm([], disable=True) as bar:
        Follower(progress, None).update(bar, "bench_ops")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"  [bench_ops] {n}/40 tests done" for n in range(4, 41, 4)]


def nan_medians(run: Path, only: str | None = None) -> None:
    """Every (or one backend's) stats median of every benchmark file set to NaN, as a broken stage leaves them."""
    for f in run.glob("bench_*.json"):
        data = json.loads(f.read_text())
        for row in data["benchmarks"]:
            if only is None or row["extra_info"].get("backend") == only:
                row["stats"]["median"] = float("nan")
                for field in ("ratio_median", "cold_median_s"):
                    if field in row["extra_info"]:
                        row["extra_info"][field] = float("nan")
        f.write_text(json.dumps(data))


def test_compare_names_a_run_whose_medians_are_all_nan(tmp_path, capsys):
    a, b = synthetic_run(tmp_path / "a", seed=1), synthetic_run(tmp_path / "b", seed=1)
    nan_medians(b)
    ops = b / "bench_ops.json"  # op rows alone: every median (warm and cold) NaN
    assert cli(["compare", str(a / "bench_ops.json"), str(ops), "--fail-on-regression"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ops) in err and "NaN" in err
    assert cli(["compare", str(a), str(b), "--fail-on-regression"]) == 1  # the whole run: its gates cannot pass


def test_compare_fails_a_gated_row_that_is_no_longer_measured(tmp_path, capsys):
    a, b = synthetic_run(tmp_path / "a", seed=1), synthetic_run(tmp_path / "b", seed=1)
    nan_medians(b, only="per_head_loop")  # its interleaved ratio came out NaN: its gate cannot pass
    assert cli(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert "per_head_loop" in capsys.readouterr().out


def test_compare_csv_into_a_folder_is_one_line(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a", seed=1)
    assert cli(["compare", str(a), str(a), "--csv", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--csv" in err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--backends", ","], "--backends names no backend"),
        (["--target", "nan"], "--target must be a finite loss"),
        (["--target", "-1"], "--target must be a finite loss"),
        (["--dtype", "int64"], "not a torch floating dtype"),
        (["--heat-steps", "-5"], "--heat-steps must be at least 1"),
        (["--data", "/no/such/file.txt"], "--data /no/such/file.txt: no such file"),
        (["--name", "."], "starts with a dot"),
        (["--name", ".."], "starts with a dot"),
        (["--name", "a/b"], "path separator"),
        (["--name", "x" * 300], "300 characters long"),
        (["--name", "tab\there"], "control character"),
        (["--device", "cuda"], "needs CUDA"),
    ],
)
def test_run_refuses_bad_options_before_any_stage(tmp_path, capsys, monkeypatch, args, says):
    from attnbench.bench.job import main_job

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(main_job.Job, "run", lambda self: pytest.fail("a stage started"))
    assert cli(["run", *args, "--out-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "reports").exists()  # nothing written, nothing moved


def test_run_refuses_an_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert cli(["run", "--out-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"


def test_regen_touches_only_the_files_its_build_wrote(tmp_path):
    run = synthetic_run(tmp_path / "r1")
    assert cli(["regen", str(run)]) == 0
    (run / "notes").mkdir()
    (run / "notes" / "report.md").write_text("my own report.md")  # shares an output's name, in a subfolder
    (run / "logs").mkdir(exist_ok=True)
    (run / "logs" / "results.csv").write_text("mine")
    outside = tmp_path / "big_data.txt"
    outside.write_text("not to be copied")
    (run / "data").symlink_to(outside)  # a link the user made
    assert cli(["regen", str(run)]) == 0
    assert (run / "notes" / "report.md").read_text() == "my own report.md"
    assert (run / "logs" / "results.csv").read_text() == "mine"
    assert (run / "data").is_symlink() and (run / "data").resolve() == outside.resolve()
    assert "report.md" in json.loads((run / "manifest.json").read_text())["written"]


def test_two_runs_started_in_the_same_second_get_two_names(tmp_path, monkeypatch):
    from attnbench.bench.job import main_job

    monkeypatch.setattr(main_job.time, "strftime", lambda fmt: "2026-01-01_000000")
    first, _ = main_job.reserve(tmp_path, None, False, "")
    second, _ = main_job.reserve(tmp_path, None, False, "")
    assert (first, second) == ("2026-01-01_000000", "2026-01-01_000000-2")
    main_job.reserve(tmp_path, "mine", False, "")
    with pytest.raises(FileExistsError, match="being written by another run"):  # even with --force
        main_job.reserve(tmp_path, "mine", True, "")


def test_a_partial_directory_whose_stage_is_alive_is_never_cleaned(tmp_path):
    from attnbench.bench.job import main_job

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        partial = tmp_path / ".partial-orphaned"
        partial.mkdir()
        (partial / "owner.pid").write_text(f"{dead.pid}\n{stage.pid}\n")  # the run was killed; its stage writes on
        assert main_job.clean_stale_partials(tmp_path) == [] and partial.is_dir()
    finally:
        stage.kill()
        stage.wait()
    assert main_job.clean_stale_partials(tmp_path) == [partial]


SLEEPY_RUN = """
import sys
from attnbench.bench.job import main_job
from attnbench.bench.options import RunConfig

def sleepy_stage(self, stage, bar):  # a stage whose pytest process sleeps: the run is stopped while it runs
    return ("ok" if self.pytest(stage, [sys.argv[1]], bar) == 0 else "failed"), ""

main_job.Job.bench_stage = sleepy_stage
sys.exit(main_job.Job(RunConfig(backends=["manual"], name="stopped", out_dir=sys.argv[2]), "attnbench run").run())
"""


def test_sigterm_to_run_stops_its_stage_and_leaves_nothing(tmp_path):
    (tmp_path / "test_sleep.py").write_text("import time\n\ndef test_sleep():\n    time.sleep(300)\n")
    reports = tmp_path / "reports"
    run = subprocess.Popen([sys.executable, "-c", SLEEPY_RUN, str(tmp_path / "test_sleep.py"), str(reports)])
    lock = reports / ".partial-stopped" / "owner.pid"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and len(lock.read_text().split()) == 2):  # the run's pid, then its stage's
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.2)
    stage = int(lock.read_text().split()[1])
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 128 + signal.SIGTERM
    from attnbench.bench.job.main_job import pid_alive

    assert not pid_alive(stage)  # stopped and reaped, not orphaned
    assert list(reports.iterdir()) == []  # no partial directory, no report
