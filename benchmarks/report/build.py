"""The report's sections assembled from a run directory: report.md, report.html, results.csv and the plots;
`regen` rebuilds them for a saved run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..schema import MANIFEST, OUTPUTS, load_run, swap_in
from .document import Doc
from .sections import SECTIONS, title


def build_in_place(run_dir: Path) -> Path:
    """Write the derived files of `run_dir` from its raw inputs: results.csv, then each of the report's SECTIONS
    into report.md and report.html (plots beside them), and the manifest of what it wrote; returns report.md."""
    run = load_run(run_dir)
    out = Path(run_dir)
    run.results.to_csv(out / "results.csv", index=False)
    doc = Doc(out)
    for section in SECTIONS:
        section(doc, run)
    (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
    (out / "report.html").write_text(doc.html(title(run)), encoding="utf-8")
    written = [name for name in OUTPUTS if (out / name).is_file() and not (out / name).is_symlink()]
    (out / MANIFEST).write_text(json.dumps({"written": [*written, MANIFEST]}, indent=1))
    return out / "report.md"


def owned_files(run_dir: Path) -> set[str]:
    """The top-level files of `run_dir` that its build wrote (its manifest; before manifests: the build's fixed
    outputs), the only ones regen replaces: a file of the same name in a subfolder, or a link, is never touched."""
    try:
        return set(json.loads((run_dir / MANIFEST).read_text())["written"])
    except (OSError, ValueError, KeyError, TypeError):
        return set(OUTPUTS)


def regen(run_dir: str | Path) -> Path:
    """Rebuild the derived files (schema.OUTPUTS) of a saved run from its inputs, atomically: the old report
    stays intact until the new one is complete (built in a copy, then swapped in). Only the top-level files the
    build wrote (its manifest) are rebuilt; every other file (a screenshot, notes, a subfolder's report.md) is kept
    as it is, links as links. A missing, broken or foreign input is an error naming it."""
    run_dir = Path(run_dir)
    load_run(run_dir, strict=True)  # fail early, naming the file, before copying anything
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.regen-"))
    os.chmod(tmp, 0o755)
    try:
        owned = owned_files(run_dir)

        def rebuilt(folder: str, names: list[str]) -> set[str]:  # the build's files, at the top level only
            return {n for n in names if n in owned} if Path(folder) == run_dir else set()

        shutil.copytree(run_dir, tmp, dirs_exist_ok=True, ignore=rebuilt, symlinks=True)
        build_in_place(tmp)
        swap_in(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir / "report.md"
