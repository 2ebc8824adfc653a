"""The feature sweep (bench_features.py): its rows, its per-feature scaling fit, its skips and its report table."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.measure import attention_call, attention_inputs
from attnbench.bench.measuring.roofline import mask_visible_pairs, pairs_flops
from attnbench.bench.measuring.scaling import scaling_table
from attnbench.bench.report.build import build_in_place
from attnbench.bench.report.tables import feature_scaling_table
from attnbench.bench.schema import Run, make_row

REPO = Path(__file__).resolve().parent.parent


def feature_row(backend: str, feature: str, T: int, median_s: float, mode: str = "fwd") -> dict:
    window = 256 if feature.startswith("window") else None
    return make_row(
        "feature_op", backend=backend, device="cpu", dtype="float32", mode=mode, feature=feature, B=1, H=8,
        Hkv=1, T=T, D=64, window=window, threads=1, median_s=median_s, peak_mem_bytes=1000 * T,
    )  # fmt: skip


def test_feature_rows_are_fitted_per_feature_and_apart_from_op_rows():
    Ts = [1024, 2048, 4096, 8192]
    rows = [feature_row("chunked", "window256", T, 1e-6 * T) for T in Ts]  # linear
    rows += [feature_row("chunked", "gqa8:1", T, 1e-9 * T**2) for T in Ts]  # quadratic, same backend and mode
    op = {"kind": "op", "backend": "chunked", "device": "cpu", "dtype": "float32", "mode": "fwd"}
    rows += [{**op, "T": T, "median_s": 1e-12 * T**3, "peak_mem_bytes": T} for T in Ts]  # cubic: not mixed in
    fits = {f["feature"]: f for f in scaling_table(rows, kind="feature_op")}
    assert set(fits) == {"window256", "gqa8:1"}
    assert fits["window256"]["time_exponent"] == pytest.approx(1.0)
    assert fits["gqa8:1"]["time_exponent"] == pytest.approx(2.0)
    assert fits["window256"]["mem_exponent"] == pytest.approx(1.0)
    (op_fit,) = scaling_table(rows)  # the op fit sees the op rows alone, with no feature key
    assert op_fit["time_exponent"] == pytest.approx(3.0) and "feature" not in op_fit


def test_the_timed_call_passes_the_feature_on():
    """A GQA call on fewer key/value heads, and a windowed call, each equal to the backend called directly."""
    manual = get_backend("manual")
    q, k, v, do = attention_inputs(1, 4, 16, 8, "cpu", torch.float32, requires_grad=False, Hkv=2)
    assert k.shape == v.shape == (1, 2, 16, 8) and q.shape == do.shape == (1, 4, 16, 8)
    (windowed,) = attention_call(manual, "fwd", q, k, v, do, window=3)()
    torch.testing.assert_close(windowed, manual(q, k, v, causal=True, window=3), rtol=0, atol=0)
    assert not torch.allclose(windowed, manual(q, k, v, causal=True))  # the window changed the result


def test_a_feature_row_names_its_feature():
    with pytest.raises(ValueError, match=r"needs \['feature'"):
        make_row("feature_op", backend="chunked", device="cpu", dtype="float32", mode="fwd", B=1, H=4, Hkv=4, T=8,
                 D=4, window=2, threads=1)  # fmt: skip


def test_the_window_goal_is_judged_on_chunked_windowed_rows_only():
    def fit(backend, feature, exponent):
        return {"backend": backend, "device": "cpu", "dtype": "float32", "mode": "fwd+bwd", "feature": feature,
                "T_fit": [1024, 8192], "time_exponent": exponent, "mem_exponent": 1.0}  # fmt: skip

    fits = [fit("chunked", "window256", 1.1), fit("sdpa_math", "window256", 2.0), fit("chunked", "gqa8:1", 2.0)]
    t = feature_scaling_table(Run(Path("."), bench={"bench_features.json": {"attnbench": {"feature_scaling": fits}}}))
    goal = {(r.backend, r.feature): r.goal for r in t.itertuples()}
    assert goal == {("chunked", "window256"): "met (<= 1.2)", ("sdpa_math", "window256"): "", ("chunked", "gqa8:1"): ""}
    fits[0]["time_exponent"] = 1.3
    t = feature_scaling_table(Run(Path("."), bench={"bench_features.json": {"attnbench": {"feature_scaling": fits}}}))
    assert "MISSED (<= 1.2)" in set(t["goal"])


def test_a_tiny_sweep_writes_rows_fits_skips_and_a_report(tmp_path):
    """T=64 and 320 (the window cuts pairs at 320): chunked against the baseline, compiled_manual (no features)
    skipped with its reason, the JSON fitted per feature, and the report built from the run directory."""
    out, xml = tmp_path / "bench_features.json", tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/suites/bench_features.py",
           "--benchmark-only", "--bench-quick", "--bench-device=cpu", "--bench-T=64,320",
           "--bench-backends=chunked,compiled_manual", f"--bench-json={out}", f"--junitxml={xml}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    rows = [b["extra_info"] for b in data["benchmarks"]]
    features = {"gqa8:1", "gqa4:1", "window256"}
    for backend in ("chunked", "sdpa_math"):  # the baseline has rows of its own
        got = {(r["feature"], r["mode"], r["T"]) for r in rows if r["backend"] == backend}
        assert got == {(f, m, T) for f in features for m in ("fwd", "fwd+bwd") for T in (64, 320)}
    for r in rows:
        assert r["kind"] == "feature_op" and r["baseline"] == "sdpa_math" and r["threads"] == 1
        assert r["visible_pairs"] == mask_visible_pairs(1, r["H"], r["T"], r["T"], window=r["window"])
        assert r["flops"] == pairs_flops(r["visible_pairs"], r["D"], r["mode"])
        assert r["peak_mem_bytes"] > 0 and r["ratio_p25"] <= r["ratio_median"] <= r["ratio_p75"]
        if r["backend"] == "sdpa_math":
            assert r["ratio_median"] == 1.0
    window_320 = next(r for r in rows if r["feature"] == "window256" and r["T"] == 320)
    assert window_320["visible_pairs"] < 4 * 320 * 321 // 2  # fewer than causal: the window's pairs are counted
    fits = {(f["backend"], f["feature"], f["mode"]): f for f in data["attnbench"]["feature_scaling"]}
    assert set(fits) == {(b, f, m) for b in ("chunked", "sdpa_math") for f in features for m in ("fwd", "fwd+bwd")}
    assert all(f["T_fit"] == [64, 320] and f["time_exponent"] > 0 for f in fits.values())
    skipped = {
        tc.get("name"): tc.find("skipped").get("message")
        for tc in ET.parse(xml).getroot().iter("testcase")
        if tc.find("skipped") is not None
    }
    assert len(skipped) == 12 and all("compiled_manual" in name for name in skipped)
    assert skipped["test_feature[compiled_manual-gqa8:1-cpu-float32-fwd-T64]"].endswith(
        "compiled_manual does not implement gqa"
    )
    assert skipped["test_feature[compiled_manual-window256-cpu-float32-fwd+bwd-T320]"].endswith(
        "compiled_manual does not implement window"
    )
    report = build_in_place(tmp_path).read_text()
    assert "met (<= 1.2)" in report or "MISSED (<= 1.2)" in report  # chunked's windowed fits are judged
    assert "speed-up vs sdpa_math" in report
