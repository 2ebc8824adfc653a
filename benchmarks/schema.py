"""What a run directory holds: its stages and their files, the row kinds of the benchmark files, and reading it.

The main job writes through the names here; the report, `regen` and `compare` read through `load_run`. A
problem with an input is a `ReportInputError` naming the file: missing, empty, truncated, of the wrong shape,
or with a field of the wrong type.

Row kinds: every benchmark row (a pytest-benchmark entry's extra_info) is built by `make_row(kind, ...)`,
which checks that the fields naming what was measured are there; any further field is a column of
results.csv, so a new measurement is one more keyword. `select(df, kind)` picks the rows of kinds.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# ------------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class Stage:
    """A stage of a run, declared once: the files it writes into the run directory and the report's sections
    that show them."""

    name: str
    outputs: tuple[str, ...]  # files the stage writes into the run directory
    sections: tuple[str, ...] = ()  # its report sections: functions of report/sections.py, in report order
    benchmark: bool = False  # the pytest-benchmark suite suites/<name>.py, writing <name>.json: rows of results.csv
    main_job: bool = True  # run by `attnbench run`; else a command of its own writes its file into a run directory


def bench_stage(name: str, *sections: str, main_job: bool = True) -> Stage:
    """The stage of the benchmark suite suites/<name>.py, writing <name>.json, shown by `sections`."""
    return Stage(name, (f"{name}.json",), sections, benchmark=True, main_job=main_job)


CORRECTNESS_XML = "correctness.xml"
HEATMAP = "heatmap.json"
# Every stage, in the order `attnbench run` runs them and the report shows their sections (after its headline:
# report/sections.py SECTIONS). A new benchmark stage is its suite and one line here.
STAGES = (
    bench_stage("bench_ops", "op_level", "memory"),
    bench_stage("bench_interleaved"),  # its speed-ups head the report, beside the verdict (report/sections.py)
    bench_stage("bench_features", "feature_sweep", main_job=False),  # too long for the main job: its own command
    bench_stage("bench_model", "model_level"),
    bench_stage("bench_train_to_target", "training_to_target"),
    Stage("correctness", (CORRECTNESS_XML,)),  # shown by the verdict
    Stage("heatmap", (HEATMAP,), ("heatmaps",)),
)
STAGE_FILES = {s.name: s.outputs for s in STAGES}
BENCH_FILES = tuple(s.outputs[0] for s in STAGES if s.benchmark and s.main_job)
# written by a command of its own (too long for the main job), read when the run directory holds it
OPTIONAL_BENCH_FILES = tuple(s.outputs[0] for s in STAGES if s.benchmark and not s.main_job)
RUN_INFO = "run.json"  # command, config, backends, support matrix, the stage records
ENV = "env.json"
CONFIG = "run-config.json"  # the one serialized configuration every stage reads
LOGS = "logs"
PARTIAL_PREFIX = ".partial-"  # a run directory being written (renamed into place when complete)
PARTIAL_LOCK = "owner.pid"  # inside a partial directory: the pid of the `attnbench run` writing it
# Derived files: rebuilt from the inputs by every build; regen replaces exactly these and keeps everything else.
REPORT_FILES = ("report.md", "report.html", "results.csv")
PLOTS = {
    "speedup": "speedup.png",
    "time_vs_T": "time_vs_T.png",
    "memory_vs_T": "memory_vs_T.png",
    "loss_curves": "loss_curves.png",
    "time_to_target": "time_to_target.png",
    "heatmaps": "heatmaps.png",
}
OUTPUTS = REPORT_FILES + tuple(PLOTS.values())
MANIFEST = "manifest.json"  # the top-level files a build wrote: all that a later regen may replace


class ReportInputError(ValueError):
    """A saved run or benchmark file is missing, empty, truncated or not in the expected shape."""


# --------------------------------------------------------------------------------------------- row kinds

# kind -> the fields that say what a row measured (compare matches rows on them)
ROW_KINDS = {
    "op": ("backend", "device", "dtype", "mode", "B", "H", "T", "D", "threads"),
    "interleaved": ("backend", "device", "dtype", "mode", "B", "H", "T", "D", "threads", "baseline"),
    "feature_op": ("backend", "device", "dtype", "mode", "feature", "B", "H", "Hkv", "T", "D", "window", "threads"),
    "train_step": ("backend", "device", "dtype", "B", "T", "threads"),
    "generate": ("backend", "device", "dtype", "B", "T", "threads", "use_cache"),
    "train_to_target": ("backend", "device", "dtype", "target"),
    "paged_decode": ("backend", "device", "dtype", "B", "L", "Hq", "Hkv", "D", "page_size", "threads"),
    "varlen_prefill": ("backend", "device", "dtype", "B", "tokens", "Hq", "Hkv", "D", "threads"),
}
STAT_COLUMNS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "rounds", "iterations")


def make_row(kind: str, **fields) -> dict:
    """A benchmark row of `kind` (the extra_info of one pytest-benchmark entry): identity fields checked."""
    if kind not in ROW_KINDS:
        raise ValueError(f"unknown row kind {kind!r}; known: {sorted(ROW_KINDS)}")
    missing = [f for f in ROW_KINDS[kind] if f not in fields]
    if missing:
        raise ValueError(f"a {kind!r} row needs {missing}")
    return {"kind": kind, **fields}


def select(df: pd.DataFrame, *kinds: str) -> pd.DataFrame:
    """The rows of results.csv of the given kinds (op rows: those with a T, by ascending T)."""
    out = df[df["kind"].isin(kinds)]
    if kinds == ("op",):
        out = out[out["T"].notna()].sort_values("T") if "T" in out else out.iloc[0:0]
    return out


# ------------------------------------------------------------------------------------------------ reading


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


def _is_number(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def check_fields(path, where: str, obj: dict, types: dict[str, type | tuple]) -> None:
    """Each present key of `obj` named in `types` has that type, else one ReportInputError naming file and field."""
    for key, want in types.items():
        if key in obj and obj[key] is not None and not isinstance(obj[key], want):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            got = type(obj[key]).__name__
            raise ReportInputError(f"{path}: {where}'{key}' should be {names}, got {got} {obj[key]!r:.60}")


def load_benchmark_json(path: str | Path) -> dict:
    """A pytest-benchmark JSON file (a 'benchmarks' list, each with numeric 'stats' and an 'extra_info' object)."""
    data = read_json(path)
    if not isinstance(data.get("benchmarks"), list):
        raise ReportInputError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    check_fields(path, "", data, {"attnbench": dict})
    for i, b in enumerate(data["benchmarks"]):
        if not isinstance(b, dict) or not isinstance(b.get("stats"), dict):
            raise ReportInputError(f"{path}: benchmark #{i} has no 'stats' (truncated or hand-edited file?)")
        bad = [k for k in STAT_COLUMNS if not _is_number(b["stats"].get(k))]
        if bad:
            k = bad[0]
            raise ReportInputError(f"{path}: benchmark #{i} stats '{k}' should be a number, got {b['stats'][k]!r:.60}")
        check_fields(path, f"benchmark #{i} ", b, {"extra_info": dict, "name": str, "group": str})
        extra = b.get("extra_info") or {}
        numeric = {"T": (int, float), "B": (int, float), "threads": (int, float), "steps": (int, float)}
        check_fields(path, f"benchmark #{i} extra_info ", extra, {"kind": str, "backend": str, **numeric})
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
        for key, value in (b.get("extra_info") or {}).items():
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


def read_run_info(path: Path) -> dict:
    """run.json, with the types the report relies on checked."""
    info = read_json(path)
    check_fields(path, "", info, {"stages": list, "backends": list, "support": dict, "config": dict, "command": str})
    for i, s in enumerate(info.get("stages") or []):
        if not isinstance(s, dict) or not isinstance(s.get("stage"), str):
            raise ReportInputError(f"{path}: stages #{i} should be an object with a 'stage' name, got {s!r:.60}")
    for b, combos in (info.get("support") or {}).items():
        if not isinstance(combos, dict):
            raise ReportInputError(f"{path}: support '{b}' should be an object, got {type(combos).__name__}")
    return info


def read_heatmap(path: Path) -> dict:
    heat = read_json(path)
    check_fields(path, "", heat, {"matrices": dict, "max_abs_diff_vs_reference": dict, "skipped": dict, "tokens": list})
    bad = [k for k, v in (heat.get("max_abs_diff_vs_reference") or {}).items() if not _is_number(v)]
    if bad:
        raise ReportInputError(f"{path}: max_abs_diff_vs_reference '{bad[0]}' should be a number")
    return heat


def read_correctness(path: str | Path) -> dict:
    """{'cases': [...], 'totals': {...}} from the correctness stage's junit XML; each case has its recorded
    properties (the conformance tests record 'backend', 'property', 'max_err', 'bound')."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ReportInputError(f"{path}: junit XML file is missing or empty")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ReportInputError(f"{path}: not valid junit XML (truncated?): {e}") from e
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportInputError(f"{path}: not a junit XML report (root element <{root.tag}>, not <testsuites>)")
    cases = []
    for tc in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                status = "failed" if tag in ("failure", "error") else "skipped"
                if el.get("type") == "pytest.xfail":
                    status = "declared"  # an expected failure: the backend's declared departure, seen
                lines = (el.get("message") or el.text or "").strip().splitlines()
                message = lines[0] if lines else ""
                break
        cases.append(
            {
                "classname": tc.get("classname", ""),
                "name": tc.get("name", ""),
                "seconds": float(tc.get("time") or 0.0),
                "status": status,
                "message": message[:300],
                **{k: v for k, v in props.items() if k},
            }
        )
    if not cases:
        raise ReportInputError(f"{path}: junit XML with no test cases (not the correctness stage's report)")
    totals = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "skipped", "declared")}
    return {"cases": cases, "totals": totals}


@dataclass
class Run:
    """Everything a report is built from; each part may be missing when its stage failed."""

    path: Path
    bench: dict[str, dict] = field(default_factory=dict)  # file name -> pytest-benchmark JSON
    run_info: dict = field(default_factory=dict)  # run.json: command, config, stages, support matrix
    env: dict = field(default_factory=dict)  # env.json
    correctness: dict = field(default_factory=dict)  # read from correctness.xml
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


def _expected_files(run_info: dict) -> set[str]:
    """The files of the stages that run.json records as ok: each must be there."""
    ok = {s["stage"] for s in run_info.get("stages") or [] if s.get("status") == "ok"}
    return {f for stage in ok for f in STAGE_FILES.get(stage, ())}


def load_run(path: str | Path, *, strict: bool = False) -> Run:
    """Load a run directory (or a single pytest-benchmark JSON file).

    strict=True raises ReportInputError on any present-but-broken file and on a missing file of a stage
    that run.json records as ok; otherwise broken and missing parts are recorded in `run.problems` (a report
    is still built from what exists). A directory with no readable benchmark file at all is always an error.
    """
    path = Path(path)
    if path.is_file():
        return Run(path.parent, bench={path.name: load_benchmark_json(path)})
    if not path.is_dir():
        raise ReportInputError(f"{path}: no such run directory or benchmark JSON file")
    run = Run(path)

    def read(name: str, reader, *, noted: bool = False):
        """reader(path / name), or None; noted: a missing file is listed in run.problems."""
        f = path / name
        if not f.exists():
            if strict and name in _expected_files(run.run_info):
                raise ReportInputError(f"{f}: missing, though run.json records its stage as ok")
            if noted:
                run.problems.append(f"{name}: not produced")
            return None
        try:
            return reader(f)
        except ReportInputError as e:
            if strict:
                raise
            run.problems.append(str(e))
            return None

    run.run_info = read(RUN_INFO, read_run_info) or {}
    run.env = read(ENV, read_json) or {}
    for name in BENCH_FILES + OPTIONAL_BENCH_FILES:
        data = read(name, load_benchmark_json, noted=name in BENCH_FILES)
        if data is not None:
            run.bench[name] = data
    run.correctness = read(CORRECTNESS_XML, read_correctness) or {}
    run.heatmap = read(HEATMAP, read_heatmap) or {}
    if not run.bench and not run.run_info:
        raise ReportInputError(f"{path}: no benchmark JSON ({', '.join(BENCH_FILES)}) and no run.json: not a run")
    return run


def swap_in(new: Path, final: Path) -> None:
    """Put directory `new` at `final`; an existing `final` is replaced only once `new` is complete."""
    if not final.exists():
        os.rename(new, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)
