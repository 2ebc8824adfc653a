"""`attnbench run`: the whole sweep on this machine, written to reports/<name>/ with a progress bar.

The job runs the stages of schema.STAGES (those of the main job, in order): each measures one thing and writes
its files (schema.STAGE_FILES) into the run directory; the report is then rendered from that directory alone.
The benchmark and correctness stages are pytest subprocesses reading the one resolved plan (run-config.json);
the heat-map stage trains a small model. Everything is written into a hidden `.partial-*` directory (with the pid of its
writer) renamed into place at the end, so an interrupted run (Ctrl-C) leaves earlier reports untouched; the
partial directories of runs that were killed are removed by the next run. A failed stage is recorded and
the report still written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .. import schema, suites
from ..measuring import envinfo
from ..options import RunConfig
from ..report.build import build_in_place

DEVICES, DTYPES = ("cpu", "cuda"), ("float32", "bfloat16", "float16")
HEAT_PROMPT = "ROMEO:\nO, she doth teach"
PROGRESS_PLUGIN = "attnbench.bench.job.progress"


def _answer(question, *args) -> str | None:
    """A backend's answer to a support question (None or why not); a plug-in's broken answer is itself reported."""
    try:
        return question(*args)
    except Exception as e:  # noqa: BLE001
        return f"{question.__name__} raised {type(e).__name__}: {e}"


def support_matrix(names: list[str]) -> dict:
    """{backend: {'cpu float32': None | why not, ...}} from the registry, as seen on this machine."""
    import torch
    from attnbench import get_backend

    matrix = {name: get_backend(name) for name in names}
    return {
        name: {f"{d} {t}": _answer(b.why_unsupported, d, getattr(torch, t)) for d in DEVICES for t in DTYPES}
        for name, b in matrix.items()
    }


def feature_matrix(names: list[str]) -> dict:
    """{backend: {device: {feature: None | why not}}}: the contract features each backend runs, from the registry."""
    from attnbench import FEATURES, get_backend

    matrix = {name: get_backend(name) for name in names}
    return {
        name: {d: {f: _answer(b.why_no_feature, f, d) for f in FEATURES} for d in DEVICES} for name, b in matrix.items()
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def reserve(out_dir: Path, name: str | None, force: bool, suffix: str) -> tuple[str, Path]:
    """(name, its partial directory), created at once (mkdir is atomic): two runs started in the same second get
    two names (a default name takes -2, -3, ...), and one --name is written by one run at a time. The partial
    directory holds the run's pid (schema.PARTIAL_LOCK); its absolute path, since stages run elsewhere."""
    base = name or time.strftime("%Y-%m-%d_%H%M%S") + suffix
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}-{n}"
        taken = (out_dir / candidate).exists() and not force
        if not taken:
            partial = out_dir / f"{schema.PARTIAL_PREFIX}{candidate}"
            try:
                partial.mkdir()
            except FileExistsError:
                taken = True
        if taken and name is not None:
            what = "is being written by another run" if not (out_dir / candidate).exists() else "already exists"
            raise FileExistsError(f"{out_dir / candidate} {what} (choose another --name, or --force to replace it)")
        if not taken:
            (partial / schema.PARTIAL_LOCK).write_text(f"{os.getpid()}\n")
            return candidate, partial.resolve()
    raise FileExistsError(f"no free name {base}-N in {out_dir}")


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (a scheduler, a CI cancel, `timeout`) stops the run as Ctrl-C does: the stage and its children
    stopped, the partial directory removed; exit 143."""

    def handler(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


STALE_UNLOCKED_S = 24 * 3600  # a partial directory without a pid file (an older attnbench) counts as stale after this


def clean_stale_partials(out_dir: Path, now: float | None = None) -> list[Path]:
    """Remove the `.partial-*` directories of runs that died (no pid of the run or of its stages is alive, or
    they carry no pid and are older than a day); returns what was removed. Those of live runs are left alone."""
    now = time.time() if now is None else now
    removed = []
    for d in sorted(out_dir.glob(schema.PARTIAL_PREFIX + "*")):
        if not d.is_dir():
            continue
        lock = d / schema.PARTIAL_LOCK
        try:  # one pid a line: the run's, then each stage's (a stage orphaned by a killed run still owns it)
            stale = not any(pid_alive(int(line)) for line in lock.read_text().split())
        except (OSError, ValueError):  # no readable pid: judge by age
            stale = now - d.stat().st_mtime > STALE_UNLOCKED_S
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable  # Job method (stage name, bar) -> (status, detail); writes schema.STAGE_FILES[name]


def forward_only(names: list[str]) -> dict:
    """{backend: {device: why it has no backward}} for the backends that are forward-only somewhere."""
    from attnbench import get_backend

    out = {}
    for name in names:
        reasons = {d: r for d in DEVICES if (r := get_backend(name).why_no_backward(d))}
        if reasons:
            out[name] = reasons
    return out


class Job:
    def __init__(self, cfg: RunConfig, command: str):
        self.cfg, self.command = cfg, command
        self.stages: list[dict] = []
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------------------ stages

    def pytest(self, stage: str, args: list[str], bar: tqdm) -> int:
        """Run the shipped suite `args` under pytest in a scratch directory, log to logs/<stage>.log; exit code.
        The bar follows the stage's progress file (job/progress.py), and the log too with --verbose."""
        log, progress = self.dir / schema.LOGS / f"{stage}.log", self.dir / "scratch" / f"{stage}.progress"
        scratch = self.dir / "scratch"  # pytest's and hypothesis's working files; removed before the swap
        scratch.mkdir(exist_ok=True)
        cmd = suites.pytest_command([*args, "-p", PROGRESS_PLUGIN, f"--attnbench-progress={progress}"], rootdir=scratch)
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=scratch,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={"HYPOTHESIS_PROFILE": "ci", **os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own process group: a stop reaches the stage and all it started
            )
            with open(self.dir / schema.PARTIAL_LOCK, "a") as lock:
                lock.write(f"{self.proc.pid}\n")
            follow = Follower(progress, log if self.cfg.verbose else None)
            while self.proc.poll() is None:
                time.sleep(0.2)
                follow.update(bar, stage)
            follow.update(bar, stage)
            rc, self.proc = self.proc.returncode, None
        return rc

    def bench_stage(self, stage: str, bar: tqdm) -> tuple[str, str]:
        path = suites.bench_file(stage)
        if not path.is_file():
            return "failed", f"{path} not found"
        out = self.dir / schema.STAGE_FILES[stage][0]
        args = [str(path), "--benchmark-only", f"--benchmark-json={out}", f"--bench-config={self.dir / schema.CONFIG}"]
        rc = self.pytest(stage, args, bar)
        try:
            n = len(schema.load_benchmark_json(out)["benchmarks"])
        except schema.ReportInputError:  # not written, empty or truncated: drop it, the report says the stage failed
            out.unlink(missing_ok=True)
            n = 0
        if rc == 0 and n:
            return "ok", f"{n} rows"
        return "failed", f"pytest exit {rc}, {n} rows; see logs/{stage}.log"

    def correctness_stage(self, stage: str, bar: tqdm) -> tuple[str, str]:
        xml = self.dir / schema.CORRECTNESS_XML
        args = [*suites.conformance_paths(self.cfg.quick), f"--junitxml={xml}"]
        args += [f"--backend={name}" for name in self.cfg.run_backends]
        if self.cfg.correctness_k:
            args += ["-k", self.cfg.correctness_k]
        rc = self.pytest(stage, args, bar)
        try:
            t = schema.read_correctness(xml)["totals"]
        except schema.ReportInputError as e:
            xml.unlink(missing_ok=True)
            return "failed", f"pytest exit {rc}: {e}; see logs/{stage}.log"
        detail = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"
        # failing tests are a finding (shown per backend), not a broken stage; other exit codes are
        return ("ok" if rc in (0, 1) else "failed"), detail + ("" if rc in (0, 1) else f" (pytest exit {rc})")

    def heatmap_stage(self, stage: str, bar: tqdm) -> tuple[str, str]:
        from ..measuring import heatmap

        device, steps = self.cfg.heat_device, self.cfg.heat_steps  # resolved by RunConfig.resolve
        model, tok, val = heatmap.train_small_model(self.cfg.data, steps, device, log=bar.write)
        heat = heatmap.compute(model, tok, HEAT_PROMPT, self.cfg.run_backends, device)
        heat["model"] = f"2 layers, 4 heads, width 64, {steps} steps, val loss {val:.3f}, trained with 'manual'"
        (self.dir / schema.HEATMAP).write_text(json.dumps(heat))
        diffs = heat["max_abs_diff_vs_reference"]
        return "ok", f"{len(diffs)} backends, max diff {max(diffs.values(), default=float('nan')):.1e}"

    def plan(self) -> list[StageSpec]:
        """The main job's stages in order (schema.STAGES): each writes schema.STAGE_FILES[name] into the run
        directory; a benchmark stage runs its suite (bench_stage)."""
        runs = {"correctness": self.correctness_stage, "heatmap": self.heatmap_stage}
        return [StageSpec(s.name, runs.get(s.name, self.bench_stage)) for s in schema.STAGES if s.main_job]

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> int:
        with stop_on_sigterm():
            return self._run()

    def _run(self) -> int:
        cfg = self.cfg
        out_dir = Path(cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for d in clean_stale_partials(out_dir):
            print(f"attnbench run: removed {d}, left by a run that was killed", file=sys.stderr)
        try:
            name, self.dir = reserve(out_dir, cfg.name, cfg.force, "-quick" if cfg.quick else "")
        except FileExistsError as e:
            print(f"attnbench run: {e}", file=sys.stderr)
            return 2
        final = out_dir / name
        (self.dir / schema.LOGS).mkdir()
        started = time.time()
        try:
            cfg = self.cfg = cfg.resolve()  # the plan, once: every stage reads it from run-config.json
            names = cfg.run_backends
            support = support_matrix(names)  # also validates --backends: unknown names fail here, clearly
            cfg.write(self.dir / schema.CONFIG)
            (self.dir / schema.ENV).write_text(json.dumps(envinfo.collect(), indent=1))
            plan = self.plan()
            # a terminal gets a live bar; a CI log (no terminal) one line per step instead of a redrawn bar
            live = sys.stderr.isatty()
            with tqdm(plan, desc="attnbench run", unit="stage", dynamic_ncols=True, disable=not live) as bar:
                for i, spec in enumerate(bar):
                    bar.set_description(f"attnbench run: {spec.name}")
                    if not live:
                        bar.write(f"attnbench run: stage {i + 1}/{len(plan)} {spec.name} started")
                    t0 = time.time()
                    try:
                        status, detail = spec.run(spec.name, bar)
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:  # a stage's crash is reported, the others still run
                        status, detail = "failed", f"{type(e).__name__}: {e}"
                    self.stages.append(
                        {"stage": spec.name, "status": status, "seconds": round(time.time() - t0, 1), "detail": detail}
                    )
                    bar.write(f"{spec.name}: {status} ({detail}) in {time.time() - t0:.0f} s")
                    self.write_run_info(name, names, support, started)
            self.write_run_info(name, names, support, started)
            shutil.rmtree(self.dir / "scratch", ignore_errors=True)
            (self.dir / schema.PARTIAL_LOCK).unlink()
            build_in_place(self.dir)
            schema.swap_in(self.dir, final)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (stop_on_sigterm): stop the stage, then clean up
            if self.proc is not None:
                suites.stop_group(self.proc, grace=10)
            shutil.rmtree(self.dir, ignore_errors=True)
            print("\nattnbench run: interrupted; nothing written, earlier reports untouched", file=sys.stderr)
            return 128 + getattr(e, "signum", signal.SIGINT)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        failed = [s["stage"] for s in self.stages if s["status"] != "ok"]
        print(f"report: {final / 'report.md'}  (html: {final / 'report.html'})  in {time.time() - started:.0f} s")
        if failed:
            print(f"failed stages: {', '.join(failed)} (the report says what is missing)", file=sys.stderr)
        return 1 if failed else 0

    def write_run_info(self, name: str, names: list[str], support: dict, started: float) -> None:
        info = {
            "name": name,
            "command": self.command,
            "config": asdict(self.cfg),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "wall_seconds": round(time.time() - started, 1),
            "backends": names,
            "support": support,
            "features": feature_matrix(names),  # the capability matrix of the report
            "forward_only": forward_only(names),  # their benchmarks time fwd only, gradient properties skip
            "stages": self.stages,
        }
        (self.dir / schema.RUN_INFO).write_text(json.dumps(info, indent=1))


class Follower:
    """Reads what a stage appended to its progress file (and its log, when streaming) since the last look."""

    def __init__(self, progress: Path, log: Path | None):
        self.progress, self.log = progress, log
        self.offsets = {progress: 0, log: 0}
        self.total, self.done = None, 0

    def _new_lines(self, path: Path) -> list[str]:
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets[path])
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offsets[path] += len(complete)
        return complete.decode("utf-8", errors="replace").splitlines()

    def update(self, bar: tqdm, stage: str) -> None:
        """A live bar shows every test done; without a terminal (bar disabled) one line per tenth of the stage."""
        if self.log is not None:
            for line in self._new_lines(self.log):
                bar.write(f"  [{stage}] {line}")
        for line in self._new_lines(self.progress):
            record = json.loads(line)
            if "total" in record:
                self.total = record["total"]
                continue
            self.done += 1
            of = f"/{self.total}" if self.total else ""
            if not bar.disable:
                bar.set_postfix_str(f"{self.done}{of} {record['test'][:50]} {record['outcome']}", refresh=True)
            elif self.total and self.done * 10 // self.total > (self.done - 1) * 10 // self.total:
                bar.write(f"  [{stage}] {self.done}{of} tests done")
