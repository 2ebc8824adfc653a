"""`attnbench` command line.

attnbench check mypkg.attn:fn [--profile ci|dev|thorough] [--quick] [--timeout S] [-- PYTEST_ARGS]
attnbench run [--quick] [--backends a,b] [--T 128:2048] [--dtype float32] [--device cpu] [--name N]
              [--profile gpu-short]
attnbench probe mypkg.attn:fn [--device cpu] [--native]
attnbench regen reports/NAME
attnbench compare reports/A reports/B [--threshold 0.1] [--fail-on-regression]
attnbench train ... | attnbench sample ...      (attnbench.gpt.cli)
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from .options import (
    DEVICE_CHOICES,
    RunConfig,
    csv_list,
    import_from_cwd,
    parse_backends,
    parse_dtypes,
    parse_name,
    parse_T,
)

# `attnbench run --profile NAME`: option values it presets (a GPU is lent for minutes: the whole CUDA report at once)
RUN_PROFILES = {
    "gpu-short": {
        "device": "cuda",
        "dtype": "bfloat16,float16",
        "T": "128:16384",
        "correctness_k": "cuda",  # the CUDA half of the correctness suite (CPU is covered by any CPU run)
        "heat_steps": 150,
    },
}


def apply_profile(args: argparse.Namespace) -> None:
    """Fill the options left unset from args.profile's preset; a CUDA profile needs a CUDA device."""
    preset = RUN_PROFILES.get(args.profile or "", {})
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if preset.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--profile {args.profile} needs a CUDA device, and this machine has none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnbench", description="Attention backends: correctness, benchmarks, reports.")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser(
        "check",
        help="run the conformance suite on backends; prints a verdict table, exit 1 on any failure",
        description="Run every conformance property on the given backends (registered names or "
        "package.module:function, resolved from the current directory or installed packages).",
    )
    k.add_argument("backends", nargs="+", help="registered backend names and/or package.module:function specs")
    k.add_argument(
        "--profile",
        choices=["ci", "dev", "thorough"],
        default="ci",
        help=f"hypothesis profile: ci = {examples('ci')} derandomized drawn examples per property (default), dev = "
        f"{examples('dev')} random, thorough = {examples('thorough')}; the fixed kernel-size examples run in each",
    )
    k.add_argument("--quick", action="store_true", help="only the equivalence and causality properties")
    k.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="seconds the suite may go without progress (no backend call, no test ending) before the test in "
        "flight fails as hung (default: ci and dev 300, thorough 1800)",
    )
    k.epilog = "Arguments after -- go to pytest, e.g. attnbench check mod:fn -- -x -k equivalence"

    r = sub.add_parser("run", help="the main job: benchmarks, speed-ups, training to target, correctness, report")
    r.add_argument(
        "--backends",
        type=csv_list,
        help="comma-separated backend names and/or package.module:function specs (default: all registered)",
    )
    r.add_argument("--T", help="sequence lengths: 128,256,512 or a power-of-two range 128:2048 (default: sweep's)")
    r.add_argument("--dtype", help="dtypes for the op benchmarks, e.g. float32 or bfloat16,float16")
    r.add_argument("--device", choices=DEVICE_CHOICES, help="default: cpu, plus cuda when available")
    r.add_argument("--quick", action="store_true", help="a small sweep, about 5 minutes on a 2-core CPU")
    r.add_argument("--target", type=float, help="validation loss for the training-to-target check")
    r.add_argument("--name", help="report directory name under --out-dir (default: a timestamp)")
    r.add_argument("--out-dir", default="reports", help="where reports go (default: reports)")
    r.add_argument("--data", help="tiny Shakespeare path (default: $ATTNBENCH_DATA, then the user cache)")
    r.add_argument("--heat-steps", type=int, help="training steps of the heat-map model (default 500, quick 150)")
    r.add_argument("--correctness-k", help="pytest -k expression to narrow the correctness stage")
    r.add_argument("--nanogpt", help="nanoGPT's model.py (or its folder): time its training step against this GPT's")
    r.add_argument(
        "--profile",
        choices=sorted(RUN_PROFILES),
        help="a preset for a lent machine (explicit options win): gpu-short = every CUDA backend through the "
        "correctness suite and the benchmarks, bf16 and fp16, T=128..16384, decode rows, cold and warm",
    )
    r.add_argument("--force", action="store_true", help="replace an existing report of the same name")
    r.add_argument("-v", "--verbose", action="store_true", help="stream every line of the pytest subprocesses")

    pr = sub.add_parser(
        "probe",
        help="name the conventions a kernel follows (causal alignment, window edge, scale, GQA mapping, empty rows, "
        "dtype, NaN, LSE), with the evidence and the adapter lines; exit 1 where it departs from the contract",
    )
    pr.add_argument("backend", help="a registered backend name or package.module:function")
    pr.add_argument("--device", default="cpu", help="device to probe on (default: cpu)")
    pr.add_argument("--native", action="store_true", help="a foreign adapter's kernel in its own convention")

    g = sub.add_parser("regen", help="rebuild report.md/html/csv and plots of a saved run from its JSON")
    g.add_argument("dir", help="a report directory, e.g. reports/2026-01-01_120000")

    c = sub.add_parser("compare", help="compare two saved runs and flag regressions")
    c.add_argument("a", help="baseline run: report directory or pytest-benchmark JSON file")
    c.add_argument("b", help="new run: report directory or pytest-benchmark JSON file")
    c.add_argument("--threshold", type=float, default=0.1, help="relative slowdown that counts (default 0.1)")
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any row regressed")
    c.add_argument(
        "--gate-absolute",
        action="store_true",
        help="absolute times count as regressions too (default: only the drift-free interleaved ratios and "
        "steps to target do; use on a quiet, dedicated machine)",
    )
    c.add_argument("--csv", help="also write every matched row to this CSV file")

    for name in ("train", "sample"):
        sub.add_parser(name, help=f"{name} the reference GPT (attnbench.gpt.cli)", add_help=False)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "sample"):  # everything after the subcommand belongs to attnbench.gpt.cli
        from attnbench.gpt.cli import main as model_main

        return model_main(argv)
    pytest_args: list[str] = []  # `attnbench check ... -- PYTEST_ARGS`
    if argv[:1] == ["check"] and "--" in argv:
        argv, pytest_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = build_parser().parse_args(argv)

    from attnbench import UnknownBackendError

    from .schema import ReportInputError

    try:
        if args.command == "check":
            from .check import check

            if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
                raise ValueError(f"--timeout must be a number of seconds > 0, got {args.timeout!r}")
            import_from_cwd()  # a module:function spec may name a module of the current directory
            parse_backends(args.backends, "backends")  # a broken spec is one line, before pytest starts
            return check(args.backends, args.profile, args.quick, pytest_args, args.timeout)
        if args.command == "run":
            from .job.main_job import Job

            apply_profile(args)
            check_run_options(args)
            if args.nanogpt:
                from .measuring.side_by_side import load_nanogpt

                load_nanogpt(args.nanogpt)  # not nanoGPT's model.py: one clear line now, not after the other stages
            import_from_cwd()  # a module:function spec may name a module of the current directory
            cfg = RunConfig(
                backends=parse_backends(args.backends),  # resolved now: a broken spec is one line, before any stage
                T=parse_T(args.T),
                dtype=parse_dtypes(csv_list(args.dtype)),
                device=args.device,
                quick=args.quick,
                target=args.target,
                name=args.name,
                out_dir=args.out_dir,
                data=args.data,
                heat_steps=args.heat_steps,
                correctness_k=args.correctness_k,
                nanogpt=str(Path(args.nanogpt).resolve()) if args.nanogpt else None,
                verbose=args.verbose,
                force=args.force,
            )
            return Job(cfg, "attnbench " + shlex.join(argv)).run()
        if args.command == "probe":
            from attnbench.conformance.probe import probe_command

            return probe_command(args.backend, args.device, args.native)
        if args.command == "regen":
            from .report.build import regen

            print(f"rebuilt {regen(args.dir)}")
            return 0
        if args.command == "compare":
            from .report.compare import compare, render

            check_csv_path(args.csv)
            m = compare(args.a, args.b, args.threshold, gate_absolute=args.gate_absolute)
            print(render(m, args.threshold))
            if args.csv:
                m.to_csv(args.csv, index=False)
            return 1 if args.fail_on_regression and m["regression"].any() else 0
    except (ReportInputError, UnknownBackendError, ValueError, FileNotFoundError) as e:
        print(f"attnbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 2


def check_run_options(args: argparse.Namespace) -> None:
    """Every option of `attnbench run` that a stage would only trip over minutes later, checked now (ValueError:
    one line, exit 2)."""
    import torch

    if args.backends is not None and not args.backends:
        raise ValueError("--backends names no backend (leave the option out to run every registered one)")
    if args.target is not None and not (math.isfinite(args.target) and args.target > 0):
        raise ValueError(f"--target must be a finite loss > 0, got {args.target!r}")
    if args.heat_steps is not None and args.heat_steps < 1:
        raise ValueError(f"--heat-steps must be at least 1, got {args.heat_steps}")
    if args.device in ("cuda", "all") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} needs CUDA, and this machine has none")
    if args.data is not None and not Path(args.data).is_file():
        raise ValueError(f"--data {args.data}: no such file")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise ValueError(f"--out-dir {args.out_dir} is a file, not a folder")
    parse_name(args.name)


def check_csv_path(path: str | None) -> None:
    if path is not None and (Path(path).is_dir() or not Path(path).absolute().parent.is_dir()):
        raise ValueError(f"--csv {path}: give a file path in an existing folder")


def examples(profile: str) -> int:
    """Drawn examples per property under a hypothesis profile of the conformance suite (conformance/profiles.py)."""
    import attnbench.conformance.profiles  # noqa: F401  (registers them)
    from hypothesis import settings

    return settings.get_profile(profile).max_examples


if __name__ == "__main__":
    sys.exit(main())
