"""The report and `compare` with cold/warm op timings, the roofline columns and the integrity verdict."""

from __future__ import annotations

import json

import pytest
from attnbench.bench.cli import main as cli
from attnbench.bench.measuring.envinfo import gpu_details
from attnbench.bench.report import build, compare
from test_report import synthetic_run


def with_cold_timing(run, cold_factor: float = 3.0, rejected: str | None = None):
    """The synthetic run's op rows as the op benchmark now writes them: cold rounds, roofline, integrity."""
    path = run / "bench_ops.json"
    data = json.loads(path.read_text())
    for b in data["benchmarks"]:
        e, warm = b["extra_info"], b["stats"]["median"]
        cold = cold_factor * warm
        e.update(
            timing="eager",
            cold_median_s=cold,
            cold_q1_s=0.99 * cold,
            cold_q3_s=1.01 * cold,
            cold_rounds=9,
            cold_over_warm=cold / warm,
            bytes_moved=4 * e["B"] * e["H"] * e["T"] * e["D"] * 4,
            bytes_per_s=4 * e["B"] * e["H"] * e["T"] * e["D"] * 4 / cold,
            fraction_of_bandwidth=0.5,
            arithmetic_intensity=e["T"] / 16,
            ridge_point=20.0,
            bound="compute" if e["T"] / 16 >= 20 else "memory",
            roofline_min_s=0.1 * warm,
            integrity=rejected if rejected and e["backend"] == "per_head_loop" else "ok",
        )
    data["attnbench"]["bandwidth_bytes_per_s_by"] = {"cpu": 5e9}
    path.write_text(json.dumps(data))
    return run


def first_cell(md: str, caption: str, backend: str) -> str:
    """The first T column of `backend`'s row in the table under `caption`."""
    table = md.split(caption)[1].split("####")[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {backend} |"))
    return row.split(" | ")[1]


def test_report_shows_warm_and_cold_and_the_roofline(tmp_path):
    run = with_cold_timing(synthetic_run(tmp_path / "r"), rejected="impossible time: cold median 1e-06 s ...")
    md = build.build_in_place(run).read_text()
    assert "use **warm** timings" in md  # which timing the headline ratios use
    assert "cpu float32 fwd: median time (ms), warm / cold" in md
    warm, cold = first_cell(md, "cpu float32 fwd: median time (ms), warm / cold", "manual").split(" / ")
    assert float(cold) / float(warm) == pytest.approx(3, rel=0.01)  # T=128, cold 3x warm
    assert "Measured memory bandwidth (a large copy, read + write): cpu 5e+09 B/s" in md
    roof = md.split("### Roofline")[1].split("## Memory")[0]
    assert "| FLOP/byte | ridge FLOP/byte | bound |" in roof and "| cold/warm |" in roof
    assert "| memory |" in roof and "| compute |" in roof  # T=128 below the synthetic ridge, T=1024 above
    assert "impossible time: cold median" in roof  # the rejected rows say why
    largest = md.split("#### At the largest T")[1].split("###")[0]
    assert "warm median s" in largest and "cold median s" in largest and "fraction_of_bandwidth" in largest


def test_report_of_a_run_from_before_cold_timing_still_builds(tmp_path):
    md = build.build_in_place(synthetic_run(tmp_path / "old")).read_text()
    assert "(no roofline columns: run from before cold timing)" in md
    warm, cold = first_cell(md, "cpu float32 fwd: median time (ms), warm / cold", "manual").split(" / ")
    assert float(warm) > 0 and cold == "—"


def test_compare_reads_cold_medians_as_their_own_metric(tmp_path):
    a = with_cold_timing(synthetic_run(tmp_path / "a", seed=1))
    b = with_cold_timing(synthetic_run(tmp_path / "b", seed=1), cold_factor=4.5)  # cold 50% slower, warm equal
    m = compare.compare(a, b, threshold=0.1)
    worse = m[m["worse"]]
    assert set(worse["metric"]) == {"cold median seconds"} and set(worse["kind"]) == {"op"}
    assert not m["regression"].any()  # an absolute time: listed, not gated
    assert (m["only_in"] == "").all()


def test_gpu_details_are_empty_without_cuda():
    """The CPU path of env.json's GPU record (name, compute capability, clocks need a CUDA device)."""
    import torch

    if torch.cuda.is_available():
        details = gpu_details()
        assert details and {"name", "compute_capability", "clocks_mhz", "l2_cache_bytes"} <= set(details[0])
    else:
        assert gpu_details() == []


def test_gpu_short_profile_needs_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        return  # the profile runs there; this is the refusal of a machine without one
    assert cli(["run", "--profile", "gpu-short"]) == 2
    assert "--profile gpu-short needs a CUDA device" in capsys.readouterr().err
