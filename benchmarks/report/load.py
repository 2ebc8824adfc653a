"""Reading saved runs: pytest-benchmark JSON files into one flat table, with clear errors on bad files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# The raw benchmark files of a run, one per bench module (the main job writes them under these names).
BENCH_FILES = ("bench_ops.json", "bench_interleaved.json", "bench_model.json", "bench_train_to_target.json")
STAT_COLUMNS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "rounds", "iterations")


class ReportInputError(ValueError):
    """A saved run or benchmark file is missing, empty, truncated or not in the expected shape."""


def read_json(path: str | Path) -> dict:
    """Parse a JSON object from `path`; every failure names the file."""
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"{path}: file does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ReportInputError(f"{path}: file is empty (the run that writes it probably failed or was interrupted)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportInputError(
            f"{path}: not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno} column {e.colno}"
        ) from e
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def load_benchmark_json(path: str | Path) -> dict:
    """A pytest-benchmark JSON file (checked to have a 'benchmarks' list)."""
    data = read_json(path)
    if not isinstance(data.get("benchmarks"), list):
        raise ReportInputError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for i, b in enumerate(data["benchmarks"]):
        if not isinstance(b, dict) or not isinstance(b.get("stats"), dict):
            raise ReportInputError(f"{path}: benchmark #{i} has no 'stats' (truncated or hand-edited file?)")
    return data


def _flat(value):
    """CSV-friendly cell: lists and dicts become JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def benchmark_rows(data: dict, source: str) -> list[dict]:
    """One dict per benchmark: identity, timing statistics (seconds) and the flattened extra_info."""
    rows = []
    for b in data["benchmarks"]:
        row = {"source": source, "name": b.get("name"), "group": b.get("group")}
        row.update({f"stats_{k}": b["stats"].get(k) for k in STAT_COLUMNS})
        extra = b.get("extra_info") or {}
        for key, value in extra.items():
            if key == "recipe" and isinstance(value, dict):
                row.update({f"recipe_{k}": _flat(v) for k, v in value.items()})
            row[key] = _flat(value)
        rows.append(row)
    return rows


def results_frame(files: dict[str, dict]) -> pd.DataFrame:
    """All benchmark rows of a run ({file name: parsed JSON}) as one DataFrame, one row per measurement."""
    rows = [r for source, data in files.items() for r in benchmark_rows(data, source)]
    df = pd.DataFrame(rows)
    for col in ("kind", "backend", "device", "dtype", "mode"):
        if col not in df:
            df[col] = None
    return df


@dataclass
class Run:
    """Everything a report is built from; each part may be missing when its stage failed."""

    path: Path
    bench: dict[str, dict] = field(default_factory=dict)  # file name -> pytest-benchmark JSON
    run_info: dict = field(default_factory=dict)  # run.json: command, config, stages, support matrix
    env: dict = field(default_factory=dict)  # env.json
    correctness: dict = field(default_factory=dict)  # parsed from correctness.xml
    heatmap: dict = field(default_factory=dict)  # heatmap.json
    problems: list[str] = field(default_factory=list)  # why a part is missing

    @property
    def results(self) -> pd.DataFrame:
        return results_frame(self.bench)

    def extra(self, key: str, default=None):
        """A top-level 'attnbench' entry merged over the bench files (e.g. 'scaling', 'peak_flop_per_s')."""
        for data in self.bench.values():
            value = (data.get("attnbench") or {}).get(key)
            if value:
                return value
        return default


def load_run(path: str | Path, *, strict: bool = False) -> Run:
    """Load a run directory (or a single pytest-benchmark JSON file).

    strict=True raises ReportInputError on any present-but-broken file; otherwise broken and missing parts are
    recorded in `run.problems` (a report is still built from what exists). A directory with no readable
    benchmark file at all is always an error.
    """
    from .correctness import parse_junit  # local: keeps this module importable on its own

    path = Path(path)
    if path.is_file():
        return Run(path.parent, bench={path.name: load_benchmark_json(path)})
    if not path.is_dir():
        raise ReportInputError(f"{path}: no such run directory or benchmark JSON file")
    run = Run(path)
    for name in BENCH_FILES:
        f = path / name
        if not f.exists():
            run.problems.append(f"{name}: not produced")
            continue
        try:
            run.bench[name] = load_benchmark_json(f)
        except ReportInputError as e:
            if strict:
                raise
            run.problems.append(str(e))
    for attr, name in (("run_info", "run.json"), ("env", "env.json"), ("heatmap", "heatmap.json")):
        if (path / name).exists():
            try:
                setattr(run, attr, read_json(path / name))
            except ReportInputError as e:
                if strict:
                    raise
                run.problems.append(str(e))
    if (path / "correctness.xml").exists():
        try:
            run.correctness = parse_junit(path / "correctness.xml")
        except ReportInputError as e:
            if strict:
                raise
            run.problems.append(str(e))
    if not run.bench and not run.run_info:
        raise ReportInputError(f"{path}: no benchmark JSON ({', '.join(BENCH_FILES)}) and no run.json: not a run")
    return run
