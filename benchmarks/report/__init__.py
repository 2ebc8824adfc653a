"""Reports: the main job (`attnbench run`), building a report from saved JSON, and comparing two runs.

A run directory holds the raw inputs (pytest-benchmark JSON files, the correctness junit XML, env.json,
run.json, heatmap.json) and the outputs rebuilt from them (report.md, report.html, results.csv, PNG plots).
"""

from .load import ReportInputError, load_benchmark_json, load_run, results_frame

__all__ = ["ReportInputError", "load_benchmark_json", "load_run", "results_frame"]
