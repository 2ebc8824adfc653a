"""The correctness summary: `pytest tests --junitxml=F` parsed into per-backend passed/failed and worst error."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from .load import ReportInputError


def parse_junit(path: str | Path) -> dict:
    """{'cases': [...], 'totals': {...}} from a junit XML file; each case has its recorded properties."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ReportInputError(f"{path}: junit XML file is missing or empty")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ReportInputError(f"{path}: not valid junit XML (truncated?): {e}") from e
    cases = []
    for tc in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                status = "failed" if tag in ("failure", "error") else "skipped"
                message = (el.get("message") or el.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
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
    totals = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "skipped")}
    return {"cases": cases, "totals": totals}


def _backend_of(case: dict, backends: list[str]) -> str | None:
    """The backend a test case is about: its 'backend' property, else a parametrize id naming a known backend."""
    if case.get("backend"):
        return case["backend"]
    ids = re.split(r"[\[\]\-,]", case["name"])
    # longest names first, so 'sdpa_math' is not taken for 'sdpa'
    for name in sorted(backends, key=len, reverse=True):
        if name in ids:
            return name
    return None


def _float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def summarize(correctness: dict, backends: list[str]) -> pd.DataFrame:
    """Per backend: tests passed/failed/skipped, causality tests passed/failed, worst max_err/bound."""
    rows = {}
    for case in correctness.get("cases", []):
        name = _backend_of(case, backends)
        if name is None:
            continue
        r = rows.setdefault(
            name,
            dict(
                passed=0,
                failed=0,
                skipped=0,
                causal_passed=0,
                causal_failed=0,
                worst_ratio=None,
                worst_err=None,
                worst_bound=None,
                first_failure="",
            ),
        )
        r[case["status"]] += 1
        if "causal" in (case["name"] + case["classname"]).lower() and case["status"] != "skipped":
            r["causal_" + case["status"]] += 1
        if case["status"] == "failed" and not r["first_failure"]:
            r["first_failure"] = f"{case['name']}: {case['message']}"
        err, bound = _float(case.get("max_err")), _float(case.get("bound"))
        if err is not None and bound:
            ratio = err / bound
            if r["worst_ratio"] is None or ratio > r["worst_ratio"]:
                r.update(worst_ratio=ratio, worst_err=err, worst_bound=bound)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("backend")
