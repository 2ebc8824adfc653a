"""Training to a target loss: does a (fast) backend still train the GPT, and how long does it take?

For each backend the GPT is trained from the same seed with one recipe (the `Recipe` dataclass below) by
attnbench.gpt.train.train until the validation loss on the *whole* validation split first reaches the
target (then a short leak check, below). Recorded per backend: steps, training seconds (sum of the optimizer
steps, evaluation excluded), evaluation seconds (apart), the loss curve, and a causality-leak flag. Across
backends: whether the curves agree (max |difference| of val loss over the shared evaluation steps).

Evaluating the whole val split costs as much as ~50 training steps, so the cadence is two-level: every
`eval_interval` steps train() takes a cheap estimate (`probe_iters` random val batches, the same batches for
every backend); once that estimate is within `fine_margin` of the target, the whole split is evaluated every
`fine_interval` steps and the first whole-split value <= target stops the run. The optimizer's path does not
depend on the cadence (evaluation has its own RNG), so steps-to-target is exact to within `fine_interval`.

    python -m attnbench.bench.measuring.train_to_target --backends sdpa,manual --target 1.88 --json out.json
    python -m attnbench.bench.measuring.train_to_target --recipe gqa_window   # every backend with GQA and windows
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from attnbench import backend_names, get_backend
from attnbench.gpt.atomic import AtomicFile
from attnbench.gpt.data import DataError, Dataset
from attnbench.gpt.model import GPT, GPTConfig
from attnbench.gpt.train import TrainConfig, evaluate, train

from .measure import unavailable_reason


@dataclass
class Recipe:
    """The whole training recipe of the benchmark: model shape, optimizer, schedule, evaluation cadence."""

    # model
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads (grouped-query attention when < n_head); None: n_head
    window: int | None = None  # sliding attention window; None: full causal attention
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0  # no dropout: a ~1-epoch run does not overfit, and it keeps backends comparable
    # precision: float32, or bfloat16 (float32 weights and optimizer, the matmuls under a bf16 autocast)
    dtype: str = "float32"
    attention_fp32: bool = False  # under bf16, the backend still runs (and is judged) in float32 (GPTConfig)
    # optimization
    optimizer: str = "adamw"  # adamw, or muon (Muon on the blocks' matrices, AdamW on the rest: attnbench.gpt.optim)
    adamw_impl: str = "fused"  # AdamW kernel: fused, foreach or loop (the same update, other kernels)
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    max_iters: int = 2000  # the schedule's horizon and the step budget: no target by then = not reached
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int = 1337  # model init and batch order: the same for every backend
    # evaluation
    target: float = 1.88  # whole-split validation loss to reach
    eval_interval: int = 100  # cheap estimate every this many steps
    probe_iters: int = 4  # random val batches per cheap estimate (same batches for every backend)
    fine_margin: float = 0.06  # whole-split evaluation once the estimate is below target + this
    fine_interval: int = 25  # ... every this many steps from then on (the resolution of steps-to-target)
    # Causality-leak plausibility floor (nats/char). A causal char model of this size cannot get near it in a
    # budget of this order: nanoGPT's 10.7M-parameter shakespeare-char model bottoms out at val ~1.47 after 5000
    # steps of 16k tokens. A model that sees the next character copies it: its loss heads towards 0 (about
    # log(vocab)/block_size from the last position alone) within a few hundred steps. Any observed loss (estimate
    # or whole split, train or val) below the floor flags the run.
    leak_floor: float = 1.3
    # Stopping at the first crossing could catch a leaking model mid-plunge, still above the floor. So after the
    # target is reached, training goes on this many steps (not counted in steps or train_seconds) with cheap
    # estimates every fine_interval: a leaking model falls through the floor, a causal one barely moves.
    leak_check_iters: int = 50

    def model_config(self, backend: str) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_kv_head=self.n_kv_head,
            window=self.window,
            n_embd=self.n_embd,
            dropout=self.dropout,
            attention_fp32=self.attention_fp32,
            backend=backend,
        )

    def train_config(self, device: str = "cpu") -> TrainConfig:
        return TrainConfig(
            max_iters=self.max_iters,
            optimizer=self.optimizer,
            adamw_impl=self.adamw_impl,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            min_lr=self.min_lr,
            warmup_iters=self.warmup_iters,
            weight_decay=self.weight_decay,
            beta2=self.beta2,
            grad_clip=self.grad_clip,
            eval_interval=self.eval_interval,
            eval_iters=self.probe_iters,
            seed=self.seed,
            dtype=self.dtype,
            device=device,
            progress=False,
        )


# The spine's CPU config as given (4x128, block 64, batch 12, lr 1e-3 cosine to 1e-4 over 2000 steps, warmup 100).
SPINE_RECIPE = Recipe()

# Tuned to reach 1.88 in the least training time on a 2-core CPU by the recorded search
# (reports/recipe-search/: steps to the target per candidate, step times alternated in one process).
FAST_RECIPE = dataclasses.replace(
    SPINE_RECIPE,
    n_layer=3,  # same steps to 1.88 as 4 layers (val 1.866 vs 1.875 at step 700), ~25% less time per step
    batch_size=32,  # fewer, larger steps: per-step overhead amortized, better CPU matmul efficiency
    # bf16 matmuls (weights and optimizer state float32), the attention backend in float32: a step costs 0.6 of a
    # float32 one on a CPU with native bf16 (AVX512-BF16 or AMX; 47 against 73 ms, search: bf16_lr8_h600 vs start)
    dtype="bfloat16",
    attention_fp32=True,  # every backend is still trained and judged in float32 (GPTConfig.attention_fp32)
    # Muon on the blocks' matrices (AdamW on the rest): 250 steps to AdamW's 550-700, at 1.2x the step (57 against
    # 47 ms; search: bf16_muon_lr12_h300_e25 vs bf16_lr8_h600)
    optimizer="muon",
    learning_rate=1.2e-2,  # Muon's update is scaled to AdamW's RMS (optim.py), and a sub-1M model takes a high peak
    min_lr=1.2e-3,
    warmup_iters=50,
    max_iters=300,  # the cosine horizon sits just beyond the crossing (250), so the lr is low when it matters
    eval_interval=25,  # a cheap estimate every 25 steps: a ~250-step run needs a finer watch than every 100
)
# The fast recipe in float32 throughout, for a CPU without native bf16 matmuls (250 steps, 1.4x the step here:
# search muon_lr12_h300_e25).
FLOAT32_RECIPE = dataclasses.replace(FAST_RECIPE, dtype="float32", attention_fp32=False)

# A few-second variant for smoke runs (`--ttt-quick`): a smaller model to a loose target.
QUICK_RECIPE = dataclasses.replace(
    FAST_RECIPE,
    n_layer=2,
    n_embd=64,
    batch_size=16,
    target=2.5,
    max_iters=400,
    leak_check_iters=25,
)

# The attention current LLMs run: grouped-query attention (2 query heads per key/value head) with a sliding window
# of 16 characters (3 layers reach 46 back), on the fast recipe. Only backends with both features train it.
GQA_WINDOW_RECIPE = dataclasses.replace(FAST_RECIPE, n_kv_head=2, window=16)
RECIPES = {
    "fast": FAST_RECIPE,
    "float32": FLOAT32_RECIPE,
    "spine": SPINE_RECIPE,
    "quick": QUICK_RECIPE,
    "gqa_window": GQA_WINDOW_RECIPE,
}


@dataclass
class TargetRun:
    """One backend's run to the target."""

    backend: str
    device: str
    dtype: str
    recipe: dict
    reached: bool
    steps: int  # optimizer steps done when the target was first seen (or the budget ran out)
    train_seconds: float  # sum of the optimizer-step times, evaluation excluded
    eval_seconds: float  # all evaluation time (cheap estimates and whole-split evaluations)
    final_val_loss: float  # the last whole-split val loss (nan if never evaluated)
    curve: list[list[float]] = field(default_factory=list)  # [step, whole-split val loss]
    probe_curve: list[list[float]] = field(default_factory=list)  # [step, estimated val loss] at every evaluation
    min_loss: float = math.inf  # lowest loss observed (any estimate or whole-split value)
    leak_flag: bool = False  # min_loss < leak_floor: the model most likely sees the future
    leak_floor: float = math.nan

    def extra_info(self) -> dict:
        """The pytest-benchmark extra_info row (INTERFACES.md, kind "train_to_target")."""
        return {"kind": "train_to_target", "target": self.recipe["target"], **asdict(self)}


def train_to_target(
    backend: str,
    dataset: Dataset,
    recipe: Recipe = FAST_RECIPE,
    *,
    device: str = "cpu",
    log: Callable[[str], None] = lambda s: None,
) -> TargetRun:
    """Train with `backend` (a registered name or 'module:function') until the whole val split reaches target."""
    cfg = recipe.train_config(device)
    whole = dataclasses.replace(cfg, eval_iters=0)  # evaluate() on every window of the split
    run = TargetRun(
        backend, device, recipe.dtype, asdict(recipe), False, 0, 0.0, 0.0, math.nan, leak_floor=recipe.leak_floor
    )
    whole_eval_s = 0.0

    def on_eval(row: dict, model: GPT) -> bool:
        nonlocal whole_eval_s
        step = row["step"]
        run.probe_curve.append([step, row["val_loss"]])
        run.min_loss = min(run.min_loss, row["val_loss"], row["train_loss"])
        log(f"{backend}: step {step} estimated val {row['val_loss']:.4f}")
        if run.reached:  # the leak check after the target: estimates only
            return step >= run.steps + recipe.leak_check_iters
        run.steps, run.train_seconds = step, row["train_seconds"]
        if row["val_loss"] > recipe.target + recipe.fine_margin:
            return False
        cfg.eval_interval = recipe.fine_interval  # near the target: watch closely (train() reads it every step)
        t0 = time.perf_counter()
        val = evaluate(model, dataset.val, whole)
        whole_eval_s += time.perf_counter() - t0
        run.curve.append([step, val])
        run.final_val_loss, run.min_loss = val, min(run.min_loss, val)
        log(f"{backend}: step {step} whole-split val {val:.4f} after {run.train_seconds:.1f}s of training")
        run.reached = val <= recipe.target
        return run.reached and recipe.leak_check_iters == 0

    result = train(cfg, recipe.model_config(backend), dataset, on_eval=on_eval, log=lambda s: None)
    if not run.reached:  # budget exhausted: train() evaluated at max_iters; make sure the last point is whole-split
        run.steps, run.train_seconds = cfg.max_iters, sum(result.step_times)
        if not run.curve or run.curve[-1][0] != cfg.max_iters:
            t0 = time.perf_counter()
            run.final_val_loss = evaluate(result.model, dataset.val, whole)
            whole_eval_s += time.perf_counter() - t0
            run.curve.append([cfg.max_iters, run.final_val_loss])
            run.min_loss = min(run.min_loss, run.final_val_loss)
    run.eval_seconds = result.eval_seconds + whole_eval_s
    run.leak_flag = run.min_loss < recipe.leak_floor
    return run


def curve_agreement(runs: list[TargetRun]) -> dict:
    """Max |difference| of whole-split val loss (and of the cheap estimates) between each backend and the first,
    over the evaluation steps they share. Same seed, same data, same recipe: only float rounding may differ."""
    if not runs:
        return {}
    ref = runs[0]

    def max_diff(a, b):
        shared = dict(a).keys() & dict(b).keys()
        return max((abs(dict(a)[s] - dict(b)[s]) for s in shared), default=None), len(shared)

    pairs = {}
    for r in runs[1:]:
        d, n = max_diff(ref.curve, r.curve)
        dp, n_p = max_diff(ref.probe_curve, r.probe_curve)
        pairs[r.backend] = {"max_abs_diff": d, "shared_steps": n, "probe_max_abs_diff": dp, "probe_shared_steps": n_p}
    diffs = [p["max_abs_diff"] for p in pairs.values() if p["max_abs_diff"] is not None]
    return {
        "reference": ref.backend,
        "target": ref.recipe["target"],
        "max_abs_diff": max(diffs, default=None),
        "per_backend": pairs,
        "steps_to_target": {r.backend: r.steps if r.reached else None for r in runs},
        "leaks": [r.backend for r in runs if r.leak_flag],
    }


def recipe_unavailable_reason(backend: str, recipe: Recipe, device: str = "cpu") -> str | None:
    """Why `backend` cannot train `recipe`'s GPT on `device` in the dtype its attention runs in (no such device,
    forward-only, no such dtype, or a contract feature the recipe's attention needs: the backend's own
    why_no_feature), or None."""
    b = get_backend(backend)
    attention_dtype = torch.bfloat16 if recipe.dtype == "bfloat16" and not recipe.attention_fp32 else torch.float32
    if reason := unavailable_reason(b, device, attention_dtype, backward=True):
        return reason
    features = recipe.model_config(backend).attention_features()
    return "; ".join(r for f in features if (r := b.why_no_feature(f, device))) or None


def cpu_backends(device: str = "cpu", recipe: Recipe = FAST_RECIPE) -> list[str]:
    """Registered backends that can train `recipe`'s GPT on `device`."""
    return [b for b in backend_names() if recipe_unavailable_reason(b, recipe, device) is None]


def run_all(
    backends: list[str] | None = None,
    recipe: Recipe = FAST_RECIPE,
    *,
    dataset: Dataset | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """The full train-to-target benchmark as a plain function (for the report's main job): every backend that
    can train recipe's GPT on `device` (or the given ones) to recipe.target; the others are named with the reason.
    Returns {"runs": [extra_info rows], "curve_agreement", "skipped": {backend: reason}}."""
    dataset = dataset or Dataset.load()
    runs, skipped = [], {}
    for b in backends or backend_names():
        if reason := recipe_unavailable_reason(b, recipe, device):
            log(f"train-to-target: {b} skipped on {device}: {reason}")
            skipped[b] = reason
            continue
        log(f"train-to-target: {b} on {device}, target {recipe.target}")
        r = train_to_target(b, dataset, recipe, device=device, log=log)
        log(
            f"{b}: reached={r.reached} steps={r.steps} train {r.train_seconds:.1f}s eval {r.eval_seconds:.1f}s "
            f"val {r.final_val_loss:.4f} leak={r.leak_flag}"
        )
        runs.append(r)
    return {"runs": [r.extra_info() for r in runs], "curve_agreement": curve_agreement(runs), "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default=None, help="comma-separated backends (default: all that run on --device)")
    p.add_argument("--target", type=float, default=None, help=f"whole-split val loss (default {FAST_RECIPE.target})")
    p.add_argument("--recipe", choices=list(RECIPES), default="fast", help=f"{', '.join(RECIPES)} (default fast)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="tiny Shakespeare path (default: $ATTNBENCH_DATA, the cache, ...)")
    p.add_argument("--json", default=None, help="write {runs, curve_agreement} here (atomically)")
    args = p.parse_args(argv)
    recipe = RECIPES[args.recipe]
    if args.target is not None:
        recipe = dataclasses.replace(recipe, target=args.target)
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    try:
        dataset = Dataset.load(args.data)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = run_all(backends, recipe, dataset=dataset, device=args.device)
    print(json.dumps(out["curve_agreement"], indent=1))
    if args.json:
        with AtomicFile(args.json) as fh:
            fh.write(json.dumps(out, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
