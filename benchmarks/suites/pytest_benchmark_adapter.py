"""The pytest-benchmark internals the suites rely on, in one place, for the versions they were checked against.

pytest-benchmark has no public API for two things the suites need: rounds timed outside its fixture (the
interleaved ratios) and writing --benchmark-json through a temporary file and a rename. Both reach into its
objects here, and only here; `check_version` refuses a major version they were not checked on.
"""

from __future__ import annotations

import os
from importlib import metadata

from attnbench.gpt.atomic import AtomicFile

SUPPORTED_MAJOR = (4, 5)  # checked on 4.0, 5.1, 5.2 (the JSON option holds an open file) and 5.3 (a path)


def check_version(version: str | None = None) -> str:
    """The installed pytest-benchmark version; a RuntimeError when its major version is not supported."""
    version = version or metadata.version("pytest-benchmark")
    major = int(version.split(".")[0])
    if major not in SUPPORTED_MAJOR:
        supported = ", ".join(f"{m}.x" for m in SUPPORTED_MAJOR)
        raise RuntimeError(f"pytest-benchmark {version} is not supported by attnbench's benchmarks ({supported})")
    return version


def record_rounds(benchmark, seconds: list[float]) -> None:
    """Give a pytest-benchmark fixture rounds that were timed outside it (its own timer cannot interleave).

    The row then carries these rounds' stats (min, median, ...) exactly as if `benchmark.pedantic` had timed
    them, and the fixture refuses reuse (FixtureAlreadyUsed), as after pedantic().
    """
    if benchmark.disabled:
        return
    benchmark._mode = "interleaved rounds"  # what pedantic() sets: a second use raises FixtureAlreadyUsed
    stats = benchmark._make_stats(1)
    for s in seconds:
        stats.update(s)


def _session(config):
    return getattr(config, "_benchmarksession", None)  # built in pytest-benchmark's own pytest_configure


def write_json_atomically(config, path: str | None) -> None:
    """Have the session write its JSON (to `path`, else to --benchmark-json's) through a temporary file and a
    rename at the end, so no half-written file ever exists. Call from a trylast pytest_configure."""
    session = _session(config)
    if session is None:
        return
    if path:
        session.json = AtomicFile(path)
    elif session.json:  # an open handle (pytest-benchmark < 5.3) or a path (5.3+)
        target = session.json if isinstance(session.json, (str, os.PathLike)) else session.json.name
        if hasattr(session.json, "close"):
            session.json.close()
        session.json = AtomicFile(target)


def commit_json(config) -> None:
    """Rename the session's JSON into place (pytest_unconfigure: pytest-benchmark has written it by then)."""
    session = _session(config)
    if session is not None and isinstance(session.json, AtomicFile):
        session.json.commit()
