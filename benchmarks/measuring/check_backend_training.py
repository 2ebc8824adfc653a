"""Every backend that runs on CPU in float32 trains the reference config from the same seed to the same loss as sdpa.

    python -m attnbench.bench.measuring.check_backend_training                  # 200 steps, tolerance 1e-3, 2 threads
    python -m attnbench.bench.measuring.check_backend_training --steps 50 --backends sdpa,manual

Config: 4 layers, 4 heads, n_embd 128, block 64, batch 12, lr 1e-3 cosine to 1e-4 over the run, warmup 100,
dropout 0 (the GPTConfig / TrainConfig defaults). The loss compared is the validation loss on the whole val split
(precise mode) after the last step. Exit code 1 when some backend is further than the tolerance from sdpa.
(A reduced-scale version runs in CI: tests/test_training.py::test_every_cpu_backend_trains_to_the_same_loss_as_sdpa.)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch
from attnbench import all_backends
from attnbench.gpt.data import Dataset
from attnbench.gpt.model import GPTConfig
from attnbench.gpt.train import TrainConfig, evaluate, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per backend (default: 200)")
    p.add_argument("--tol", type=float, default=1e-3, help="allowed |loss - sdpa loss| (default: 1e-3)")
    p.add_argument("--backends", help="comma-separated names (default: every backend that supports cpu/float32)")
    p.add_argument("--data", help="tiny Shakespeare path (default: $ATTNBENCH_DATA, then the cache)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = (
        args.backends.split(",")
        if args.backends
        else [b.name for b in all_backends() if b.supports("cpu", torch.float32)]
    )
    names = ["sdpa", *(n for n in names if n != "sdpa")]
    dataset = Dataset.load(args.data)
    cfg = TrainConfig(max_iters=args.steps, eval_interval=0, eval_iters=1, progress=False)
    losses = {}
    print(f"{'backend':16s} {'val loss':>10s} {'|diff| vs sdpa':>15s} {'median ms/step':>15s}  ok")
    for name in names:
        t0 = time.perf_counter()
        result = train(cfg, GPTConfig(backend=name), dataset, log=lambda s: None)
        losses[name] = evaluate(result.model, dataset.val, dataclasses.replace(cfg, eval_iters=0))  # whole val split
        diff = abs(losses[name] - losses["sdpa"])
        ms = 1000 * statistics.median(result.step_times)
        print(
            f"{name:16s} {losses[name]:10.6f} {diff:15.2e} {ms:15.2f}  {'yes' if diff <= args.tol else 'NO'}"
            f"   ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    bad = [n for n in names if abs(losses[n] - losses["sdpa"]) > args.tol]
    print(f"{len(names) - len(bad)}/{len(names)} backends within {args.tol:g} of sdpa after {args.steps} steps")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
