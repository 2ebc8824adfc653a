"""Command line for the reference GPT: `python -m attnbench.gpt train|sample` (also `attnbench train|sample`).

    python -m attnbench.gpt train --max-iters 2000 --out ckpt.pt --watch 10
    python -m attnbench.gpt sample --checkpoint ckpt.pt --prompt "ROMEO:" --top-k 20
    torchrun --standalone --nproc_per_node 2 -m attnbench.gpt train --batch-size 32   # data-parallel (DDP)

Every GPTConfig and TrainConfig field is a `train` flag (generated from the dataclasses, help text from the
comment beside each field). Bad input ends with exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch
from attnbench import UnknownBackendError, backend_names, get_backend

from . import distributed
from .checkpoint import CheckpointError, Interrupted, check_same_vocabulary, load_checkpoint
from .data import DATA_ENV, FILE_NAME, SHA256, DataError, Dataset, cache_dir
from .model import GPTConfig
from .train import TrainConfig, TrainingDiverged, check_resumable, evaluate, train

# Fields that are not flags: vocab_size comes from the data's tokenizer.
_NOT_FLAGS = {"vocab_size"}


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _field_comments(cls) -> dict[str, str]:
    """The `# why` comment beside each dataclass field, read from the source."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        helptext = f"{comments.get(f.name, f.name)} (default: {f.default})"
        # default=SUPPRESS: only flags the user gave land in the namespace (so --resume can tell them apart)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helptext)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # str | None -> str
            group.add_argument(flag, type=base, default=argparse.SUPPRESS, metavar=base.__name__.upper(), help=helptext)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attnbench.gpt", description="Train the reference GPT on tiny Shakespeare, or sample it."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train a GPT (prints a summary: precise val loss, wall time, ms/step)",
        description="Train the reference GPT on character-level tiny Shakespeare.",
        epilog=(
            f"Data: --data PATH, else ${DATA_ENV}, else {cache_dir() / FILE_NAME} "
            "(downloaded there and sha256-verified when missing). "
            f"Known backends: {', '.join(backend_names())} (or 'package.module:function'). "
            "Ctrl-C with --out saves <out stem>.last<suffix>; continue the same run with --resume."
        ),
    )
    t.add_argument("--data", metavar="PATH", help=f"tiny Shakespeare text file (default: ${DATA_ENV}, then the cache)")
    t.add_argument("--no-verify", action="store_true", help="skip the sha256 check (to train on another text file)")
    t.add_argument("--force", action="store_true", help="replace an existing --out checkpoint of another run")
    t.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue the run saved in CKPT (best-val or .last): its configs and --out apply unless overridden here",
    )
    _add_dataclass_flags(t, GPTConfig, "model (GPTConfig)")
    _add_dataclass_flags(t, TrainConfig, "training (TrainConfig)")

    s = sub.add_parser("sample", help="generate text from a checkpoint", description="Sample text from a checkpoint.")
    s.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint written by train --out")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--max-new-tokens", type=int, default=500, help="characters to generate (default: 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="> 0; lower is more conservative (default: 0.8)")
    s.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest characters")
    s.add_argument("--backend", default=None, help="attention backend (default: the one the checkpoint trained with)")
    s.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    s.add_argument("--seed", type=int, default=1337, help="sampling seed: same seed, same text (default: 1337)")
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context per token (no KV cache)")
    return parser


def _check_backend(name: str, device: str, dtype: torch.dtype) -> None:
    try:
        backend = get_backend(name)
    except UnknownBackendError as e:  # its message names the known backends
        raise CLIError(str(e)) from None
    reason = backend.why_unsupported(device, dtype)
    if reason:
        raise CLIError(f"backend {name!r} cannot run on {device}/{dtype}: {reason}")


def _check_device(device: str) -> None:
    """A device that parses and exists on this machine (cuda without CUDA, cuda:7 on one GPU: refused)."""
    try:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available on this machine")
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise CLIError(f"--device {device} cannot be used here: {str(e).splitlines()[0]}") from None


def _check_out(out: Path, args: argparse.Namespace, ckpt: dict | None) -> None:
    """--out must be a writable file path, and never another run's checkpoint (unless --force): all checked
    before training, not at the first save."""
    if out.is_dir():
        raise CLIError(f"--out {out} is a directory; give a file path such as {out / 'ckpt.pt'}")
    folder = next(p for p in out.absolute().parents if p.exists())  # the writer creates missing folders below
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CLIError(f"--out {out} cannot be written: {e.strerror or e} in {folder}") from None
    own = ckpt is not None and {Path(args.resume).resolve(), Path(ckpt["train_config"]["out"] or "").resolve()}
    if out.exists() and not args.force and not (own and out.resolve() in own):
        raise CLIError(f"--out {out} already exists; pass --force to replace it, or --resume it to continue that run")


def _load_checkpoint(path: str, backend: str | None, device: str):
    try:
        return load_checkpoint(path, backend=backend, device=device)
    except (FileNotFoundError, CheckpointError) as e:
        raise CLIError(str(e)) from None


def run_train(args: argparse.Namespace) -> int:
    given = vars(args)
    ckpt = None
    if args.resume:
        _check_device(given.get("device", "cpu"))
        ckpt = _load_checkpoint(args.resume, None, given.get("device", "cpu"))[2]
        try:
            check_resumable(ckpt, args.resume)
        except CheckpointError as e:
            raise CLIError(str(e)) from None
        model_cfg, cfg = GPTConfig(**ckpt["model_config"]), TrainConfig(**ckpt["train_config"])
    else:
        model_cfg, cfg = GPTConfig(), TrainConfig()
    for obj in (model_cfg, cfg):
        for f in dataclasses.fields(obj):
            if f.name in given:
                setattr(obj, f.name, given[f.name])
        obj.__post_init__()  # re-validate after the flags (a ValueError: one line, exit 2)
    _check_device(cfg.device)
    dp = None
    if distributed.launched_by_torchrun():  # one rank of torchrun: train data-parallel (distributed.py)
        dp, cfg.device = distributed.init_from_torchrun(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _check_backend(model_cfg.backend, cfg.device, getattr(torch, cfg.dtype))
    if cfg.out:
        _check_out(Path(cfg.out), args, ckpt)
    try:
        dataset = Dataset.load(args.data, expected_sha256=None if args.no_verify else SHA256)
        if ckpt is not None:
            check_same_vocabulary(ckpt, dataset.tokenizer, args.resume)
    except (DataError, CheckpointError) as e:
        raise CLIError(str(e)) from None
    if ckpt is not None and cfg.max_iters <= ckpt["step"]:  # before anything runs, or is cleaned up
        raise CLIError(
            f"--max-iters {cfg.max_iters} is not past step {ckpt['step']} of {args.resume}: nothing to train "
            f"(give --max-iters above {ckpt['step']})"
        )

    t0 = time.perf_counter()
    try:
        result = train(cfg, model_cfg, dataset, resume=args.resume)
    except Interrupted as e:  # SIGINT or SIGTERM: 128 + the signal's number, as a shell reports it
        what = "Ctrl-C" if e.signum == signal.SIGINT else signal.Signals(e.signum).name
        print(
            f"stopped by {what}; continue with --resume {e.saved}" if e.saved else f"stopped by {what} (nothing saved)"
        )
        return 128 + e.signum
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    if dp and not dp.is_main:  # rank 0 reports for the whole group
        return 0

    t1 = time.perf_counter()
    val = evaluate(result.model, dataset.val, dataclasses.replace(cfg, eval_iters=0))  # the whole val split
    precise_s = time.perf_counter() - t1
    ms = sorted(1000 * s for s in result.step_times)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) >= 2 else ms * 9
    print(
        f"summary | backend {model_cfg.backend} | device {cfg.device} | threads {torch.get_num_threads()} | "
        + (f"data-parallel ranks {dp.world_size} | " if dp else "")
        + f"steps {result.steps_done}/{cfg.max_iters}\n"
        f"  final val loss (whole val split): {val:.4f} (ppl {math.exp(val):.2f}); best val during training "
        f"{result.best_val:.4f}\n"
        f"  wall time {wall:.1f} s (training {sum(ms) / 1000:.1f} s, evaluation {result.eval_seconds:.1f} s) "
        f"+ final precise eval {precise_s:.1f} s\n"
        f"  training step: median {statistics.median(ms):.2f} ms, p10 {q[0]:.2f} ms, p90 {q[-1]:.2f} ms "
        f"over {len(ms)} steps (evaluation excluded)"
    )
    if cfg.out and os.path.isfile(cfg.out):
        print(f"  best-val checkpoint: {cfg.out}")
    elif cfg.out:
        print(f"  no checkpoint written to {cfg.out}: val never beat the resumed run's best {result.best_val:.4f}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise CLIError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.max_new_tokens < 0:
        raise CLIError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    _check_device(args.device)
    if args.backend is not None:
        _check_backend(args.backend, args.device, torch.float32)
    model, tokenizer, _ = _load_checkpoint(args.checkpoint, args.backend, args.device)
    try:
        ids = tokenizer.encode(args.prompt)
    except ValueError as e:
        raise CLIError(f"prompt: {e}") from None
    if not ids:
        raise CLIError("prompt is empty: give at least one character")
    if len(ids) > model.config.block_size:
        print(
            f"note: the prompt has {len(ids)} characters; the model sees only the last {model.config.block_size}",
            file=sys.stderr,
        )
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=args.device)  # (1, T)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, use_cache=not args.no_cache, generator=gen)
    out = model.generate(idx, args.max_new_tokens, **kwargs)  # (1, T + max_new_tokens)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, argparse already printed why)
        return int(e.code or 0)
    rc = None
    try:
        rc = run_train(args) if args.command == "train" else run_sample(args)
        return rc
    except (CLIError, ValueError) as e:  # ValueError: bad config or input reported by the model / data code
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before training started, or without --out: nothing to save
        print("stopped by Ctrl-C (nothing saved)", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(wait=rc == 0)  # leave the torchrun process group, if train joined one
