"""`attnbench` command line.

attnbench check mypkg.attn:fn [--profile ci|dev|thorough] [--quick] [-- PYTEST_ARGS]
attnbench run [--quick] [--backends a,b] [--T 128:2048] [--dtype float32] [--device cpu] [--name N]
              [--profile gpu-short]
attnbench regen reports/NAME
attnbench compare reports/A reports/B [--threshold 0.1] [--fail-on-regression]
attnbench train ... | attnbench sample ...      (attnbench.gpt.cli)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from attnbench.bench.options import (
    DEVICE_CHOICES,
    RunConfig,
    csv_list,
    import_from_cwd,
    parse_backends,
    parse_dtypes,
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
        help="hypothesis profile: ci = 50 derandomized examples per property (default), dev = 50 random, "
        "thorough = 500",
    )
    k.add_argument("--quick", action="store_true", help="only the equivalence and causality properties")
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
    from attnbench.bench.schema import ReportInputError

    try:
        if args.command == "check":
            return check(args.backends, args.profile, args.quick, pytest_args)
        if args.command == "run":
            from attnbench.bench.job.main_job import Job

            apply_profile(args)
            if args.nanogpt:
                from attnbench.bench.measuring.side_by_side import load_nanogpt

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
        if args.command == "regen":
            from attnbench.bench.report.build import regen

            print(f"rebuilt {regen(args.dir)}")
            return 0
        if args.command == "compare":
            from attnbench.bench.report.compare import compare, render

            m = compare(args.a, args.b, args.threshold, gate_absolute=args.gate_absolute)
            print(render(m, args.threshold))
            if args.csv:
                m.to_csv(args.csv, index=False)
            return 1 if args.fail_on_regression and m["regression"].any() else 0
    except (ReportInputError, UnknownBackendError, ValueError, FileNotFoundError) as e:
        print(f"attnbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 2


def check(specs: list[str], profile: str, quick: bool, pytest_args: list[str]) -> int:
    """The conformance suite on `specs`, in a pytest subprocess in a scratch directory; pytest's exit code."""
    import os
    import subprocess
    import tempfile

    from attnbench import get_backend
    from attnbench.bench import suites

    sys.path.insert(0, os.getcwd())  # a module:function spec may name a module of the current directory
    for spec in specs:
        get_backend(spec)  # an unknown name or a broken spec is one clear line (exit 2), before pytest starts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="attnbench-check-") as scratch:
        cmd = suites.pytest_command(
            [
                *suites.conformance_paths(quick),
                *(f"--backend={s}" for s in specs),
                f"--hypothesis-profile={profile}",
                "-q",
                *pytest_args,
            ],
            rootdir=scratch,
        )
        rc = subprocess.run(cmd, cwd=scratch, env=env).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
