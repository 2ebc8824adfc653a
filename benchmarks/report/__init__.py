"""Reports: a run directory read and rendered (report.md, report.html, results.csv, plots), and two runs compared.

A run directory holds the raw inputs the stages of `attnbench run` wrote (pytest-benchmark JSON files, the
correctness junit XML, env.json, run.json, heatmap.json) and the outputs rebuilt from them by `build`; the
files are named, and read, by attnbench.bench.schema.
"""
