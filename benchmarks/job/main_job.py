"""`attnbench run`: the whole sweep on this machine, written to reports/<name>/ with a progress bar.

Stages: the four benchmark files (pytest subprocesses writing pytest-benchmark JSON), the correctness suite
(pytest tests --junitxml), and the attention heat maps of a small freshly trained model; then the report.
Everything is written into a hidden staging directory and renamed into place at the end, so an interrupted
run (Ctrl-C) leaves earlier reports untouched. A failed stage is recorded and the report still written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from attnbench.bench import suites
from attnbench.bench.measuring import envinfo
from attnbench.bench.report.build import build_in_place, swap_in
from attnbench.bench.report.load import ReportInputError, load_benchmark_json
from tqdm.auto import tqdm

DEVICES, DTYPES = ("cpu", "cuda"), ("float32", "bfloat16", "float16")
HEAT_PROMPT = "ROMEO:\nO, she doth teach"


@dataclass
class JobConfig:
    backends: list[str] | None = None  # None: every registered backend
    T: list[int] | None = None  # None: the benchmarks' default sweep
    dtype: str | None = None  # passed to --bench-dtypes; None: the benchmarks' default per device
    device: str | None = None  # cpu | cuda | all; None: cpu, plus cuda when available
    quick: bool = False  # the small sweep (--bench-quick, --ttt-quick): about 2 minutes on 2 CPU cores
    target: float | None = None  # training-to-target loss; None: that benchmark's default
    name: str | None = None  # reports/<name>; None: a timestamp
    out_dir: str = "reports"
    data: str | None = None  # tiny Shakespeare path for the heat-map model (else ATTNBENCH_DATA / cache)
    heat_steps: int | None = None  # training steps of the heat-map model; None: 150 quick, 500 default
    correctness_k: str | None = None  # pytest -k expression for the correctness stage; None: the whole suite
    verbose: bool = False  # stream every subprocess line (else the last line shows beside the bar)
    force: bool = False  # replace an existing reports/<name>


def parse_T(spec: str) -> list[int]:
    """'128,256,1024' as given, or 'LO:HI' for the powers of two from LO to HI."""
    try:
        if ":" in spec:
            lo, hi = (int(x) for x in spec.split(":"))
            if lo < 1 or hi < lo:
                raise ValueError
            out, t = [], 1 << (lo - 1).bit_length()
            while t <= hi:
                out.append(t)
                t *= 2
            return out
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--T must be a list like 128,256,512 or a range LO:HI (powers of two), got {spec!r}"
        ) from None


def bench_options(cfg: JobConfig) -> list[str]:
    opts = []
    if cfg.backends:
        opts.append(f"--bench-backends={','.join(cfg.backends)}")
    if cfg.device:
        opts.append(f"--bench-device={cfg.device}")
    if cfg.dtype:
        opts.append(f"--bench-dtypes={cfg.dtype}")
    if cfg.T:
        opts.append(f"--bench-T={','.join(map(str, cfg.T))}")
        opts.append(f"--bench-interleaved-T={','.join(map(str, cfg.T[-3:]))}")  # ratios at the largest three
    if cfg.quick:
        opts.append("--bench-quick")
    return opts


def ttt_options(cfg: JobConfig) -> list[str]:
    opts = []
    if cfg.backends:
        opts.append(f"--ttt-backends={','.join(cfg.backends)}")
    if cfg.target is not None:
        opts.append(f"--ttt-target={cfg.target}")
    if cfg.quick:
        opts.append("--ttt-quick")
    return opts


def support_matrix(names: list[str]) -> dict:
    """{backend: {'cpu float32': None | why not, ...}} from the registry, as seen on this machine."""
    import torch
    from attnbench import get_backend

    out = {}
    for name in names:
        b = get_backend(name)
        out[name] = {}
        for device in DEVICES:
            for dtype in DTYPES:
                try:
                    out[name][f"{device} {dtype}"] = b.why_unsupported(device, getattr(torch, dtype))
                except Exception as e:  # noqa: BLE001 - a plug-in's broken answer is itself worth reporting
                    out[name][f"{device} {dtype}"] = f"support check raised {type(e).__name__}: {e}"
    return out


class Job:
    def __init__(self, cfg: JobConfig, command: str):
        self.cfg, self.command = cfg, command
        self.stages: list[dict] = []
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------------------ stages

    def pytest(self, stage: str, args: list[str], bar: tqdm) -> int:
        """Run the shipped suite `args` under pytest in a scratch directory, log to logs/<stage>.log; exit code."""
        log = self.dir / "logs" / f"{stage}.log"
        scratch = self.dir / "scratch"  # pytest's and hypothesis's working files; removed before the swap
        scratch.mkdir(exist_ok=True)
        cmd = suites.pytest_command(args, rootdir=scratch)
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=scratch,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={"HYPOTHESIS_PROFILE": "ci", **os.environ, "PYTHONUNBUFFERED": "1"},
            )
            for line in self.proc.stdout:
                f.write(line)
                if self.cfg.verbose:
                    bar.write(f"  [{stage}] {line.rstrip()}")
                elif "%]" in line:  # pytest -v progress: 'path::test[id] PASSED [ 40%]'
                    test, _, rest = line.rpartition("::")[2].partition(" ")
                    bar.set_postfix_str(f"{test[:50]} {rest.strip()}", refresh=True)
            rc = self.proc.wait()
            self.proc = None
        return rc

    def bench_stage(self, stage: str, bar: tqdm) -> tuple[str, str]:
        path = suites.bench_file(stage)
        if not path.is_file():
            return "failed", f"{path} not found"
        out = self.dir / f"{stage}.json"
        extra = ttt_options(self.cfg) if stage == "bench_train_to_target" else []
        rc = self.pytest(
            stage,
            [
                str(path),
                "--benchmark-only",
                f"--benchmark-json={out}",
                "-v",
                *bench_options(self.cfg),
                *extra,
            ],
            bar,
        )
        try:
            n = len(load_benchmark_json(out)["benchmarks"])
        except ReportInputError:  # not written, empty or truncated: drop it, the report says the stage failed
            out.unlink(missing_ok=True)
            n = 0
        if rc == 0 and n:
            return "ok", f"{n} rows"
        return "failed", f"pytest exit {rc}, {n} rows; see logs/{stage}.log"

    def correctness_stage(self, stage: str, bar: tqdm) -> tuple[str, str]:
        xml = self.dir / "correctness.xml"
        args = [*suites.conformance_paths(self.cfg.quick), f"--junitxml={xml}", "-v"]
        args += [f"--backend={name}" for name in self.cfg.backends or ["all"]]
        if self.cfg.correctness_k:
            args += ["-k", self.cfg.correctness_k]
        rc = self.pytest(stage, args, bar)
        if not xml.is_file():
            return "failed", f"pytest exit {rc}, no junit XML; see logs/{stage}.log"
        from attnbench.bench.report.correctness import parse_junit

        t = parse_junit(xml)["totals"]
        detail = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"
        # failing tests are a finding (shown per backend), not a broken stage; other exit codes are
        return ("ok" if rc in (0, 1) else "failed"), detail + ("" if rc in (0, 1) else f" (pytest exit {rc})")

    def heatmap_stage(self, stage: str, bar: tqdm) -> tuple[str, str]:
        from attnbench import backend_names
        from attnbench.bench.measuring import heatmap

        device = "cuda" if self.cfg.device == "cuda" else "cpu"
        steps = self.cfg.heat_steps or (150 if self.cfg.quick else 500)
        model, tok, val = heatmap.train_small_model(self.cfg.data, steps, device, log=bar.write)
        names = self.cfg.backends or backend_names()
        heat = heatmap.compute(model, tok, HEAT_PROMPT, names, device)
        heat["model"] = f"2 layers, 4 heads, width 64, {steps} steps, val loss {val:.3f}, trained with 'manual'"
        (self.dir / "heatmap.json").write_text(json.dumps(heat))
        diffs = heat["max_abs_diff_vs_reference"]
        return "ok", f"{len(diffs)} backends, max diff {max(diffs.values(), default=float('nan')):.1e}"

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> int:
        cfg = self.cfg
        name = cfg.name or time.strftime("%Y-%m-%d_%H%M%S") + ("-quick" if cfg.quick else "")
        out_dir = Path(cfg.out_dir)
        final = out_dir / name
        if final.exists() and not cfg.force:
            print(
                f"attnbench run: {final} already exists (choose another --name, or --force to replace it)",
                file=sys.stderr,
            )
            return 2
        out_dir.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".partial-{name}-")).resolve()  # stages run elsewhere
        os.chmod(self.dir, 0o755)
        (self.dir / "logs").mkdir()
        started = time.time()
        try:
            from attnbench import backend_names

            names = cfg.backends or backend_names()
            support = support_matrix(names)  # also validates --backends: unknown names fail here, clearly
            (self.dir / "env.json").write_text(json.dumps(envinfo.collect(), indent=1))
            plan = [
                (s, self.bench_stage)
                for s in ("bench_ops", "bench_interleaved", "bench_model", "bench_train_to_target")
            ]
            plan += [("correctness", self.correctness_stage), ("heatmap", self.heatmap_stage)]
            with tqdm(plan, desc="attnbench run", unit="stage", dynamic_ncols=True) as bar:
                for stage, fn in bar:
                    bar.set_description(f"attnbench run: {stage}")
                    t0 = time.time()
                    try:
                        status, detail = fn(stage, bar)
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:  # a stage's crash is reported, the others still run
                        status, detail = "failed", f"{type(e).__name__}: {e}"
                    self.stages.append(
                        {"stage": stage, "status": status, "seconds": round(time.time() - t0, 1), "detail": detail}
                    )
                    bar.write(f"{stage}: {status} ({detail}) in {time.time() - t0:.0f} s")
                    self.write_run_info(name, names, support, started)
            self.write_run_info(name, names, support, started)
            shutil.rmtree(self.dir / "scratch", ignore_errors=True)
            build_in_place(self.dir)
            swap_in(self.dir, final)
        except KeyboardInterrupt:
            if self.proc is not None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.dir, ignore_errors=True)
            print("\nattnbench run: interrupted; nothing written, earlier reports untouched", file=sys.stderr)
            return 130
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
            "stages": self.stages,
        }
        (self.dir / "run.json").write_text(json.dumps(info, indent=1))
