"""attnbench.bench: the benchmarks, the main job and its reports, and the `attnbench` command.

cli.py      the command line (`attnbench check | run | regen | compare | train | sample`)
suites/     the pytest-benchmark suites (bench_*.py), their pytest plugin (conftest.py), their launcher
measuring/  what is measured and how: timing, memory, interleaved ratios, scaling, training to target, heat maps
job/        the main job (`attnbench run`): stages that each write their part of a run directory
report/     reading a run directory and rendering it (Markdown, HTML, CSV, plots); comparing two runs
"""
