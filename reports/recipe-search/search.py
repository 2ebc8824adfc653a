"""The recorded search for the training-to-target recipe: the fewest training seconds to whole-split val <= 1.88.

Each candidate is a set of changes to the recipe the search started from (`START`). Two measurements per
candidate, kept apart because their noise differs:

  steps    one train_to_target run with sdpa (no leak check): the steps to the target, exact to within
           fine_interval and the same on a busy machine as on a quiet one (the run is deterministic for a seed)
  time     every candidate's training step in one process, alternated round-robin after a warm-up, so machine
           drift hits all alike: the median seconds per step

Estimated training seconds = steps x median step time; the table ranks candidates by it. The chosen recipe is
then confirmed by real train_to_target runs (reports/recipe-search/README.md).

    python reports/recipe-search/search.py steps --only muon,muon_lr6 [--threads 1]
    python reports/recipe-search/search.py time --only base,muon --rounds 40
    python reports/recipe-search/search.py table            # results.md from results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from attnbench.bench.measuring.train_to_target import Recipe, train_to_target
from attnbench.gpt.data import Dataset, get_batch
from attnbench.gpt.model import GPT
from attnbench.gpt.optim import make_optimizer
from attnbench.gpt.step import TrainStep

HERE = Path(__file__).parent
RESULTS = HERE / "results.jsonl"

# The recipe the search started from: the earlier FAST_RECIPE (3 layers x 128, batch 32, AdamW lr 3e-3).
START = Recipe(
    adamw_impl="foreach",
    n_layer=3,
    batch_size=32,
    learning_rate=3e-3,
    min_lr=3e-4,
    warmup_iters=50,
    max_iters=1000,
    leak_check_iters=0,
)
BF16_MUON = dict(dtype="bfloat16", attention_fp32=True, optimizer="muon")
CANDIDATES: dict[str, dict] = {
    "start": {},
    "fused": dict(adamw_impl="fused"),
    "muon": dict(optimizer="muon"),
    "muon_lr6": dict(optimizer="muon", learning_rate=6e-3, min_lr=6e-4),
    "muon_lr12": dict(optimizer="muon", learning_rate=1.2e-2, min_lr=1.2e-3),
    "muon_2l": dict(optimizer="muon", n_layer=2),
    "muon_T32_b64": dict(optimizer="muon", block_size=32, batch_size=64),
    "muon_b16": dict(optimizer="muon", batch_size=16),
    "muon_b64": dict(optimizer="muon", batch_size=64),
    "muon_w96": dict(optimizer="muon", n_embd=96),
    "muon_h600": dict(optimizer="muon", max_iters=600),
    "muon_h400": dict(optimizer="muon", max_iters=400),
    "muon_2l_lr6": dict(optimizer="muon", n_layer=2, learning_rate=6e-3, min_lr=6e-4),
    # bfloat16 matmuls (AMX on this CPU), the attention backend still in float32 (Recipe.attention_fp32)
    "bf16": dict(dtype="bfloat16", attention_fp32=True),
    "bf16_h700": dict(dtype="bfloat16", attention_fp32=True, max_iters=700),
    "bf16_lr5_h700": dict(dtype="bfloat16", attention_fp32=True, learning_rate=5e-3, min_lr=5e-4, max_iters=700),
    "bf16_b48_h500": dict(dtype="bfloat16", attention_fp32=True, batch_size=48, max_iters=500),
    "bf16_2l_h700": dict(dtype="bfloat16", attention_fp32=True, n_layer=2, max_iters=700),
    "bf16_lr8_h600": dict(dtype="bfloat16", attention_fp32=True, learning_rate=8e-3, min_lr=8e-4, max_iters=600),
    "bf16_lr5_b48_h450": dict(
        dtype="bfloat16", attention_fp32=True, learning_rate=5e-3, min_lr=5e-4, batch_size=48, max_iters=450
    ),
    # Muon on bfloat16 matmuls: Muon's fewer steps at bf16's cheaper step
    "bf16_muon_lr6": dict(BF16_MUON, learning_rate=6e-3, min_lr=6e-4),
    "bf16_muon_lr6_h450": dict(BF16_MUON, learning_rate=6e-3, min_lr=6e-4, max_iters=450),
    "bf16_muon_lr12_h400": dict(BF16_MUON, learning_rate=1.2e-2, min_lr=1.2e-3, max_iters=400),
    # the same with a cheap estimate every 25 steps: the crossing to within 25 steps, not 100
    "bf16_muon_lr12_h400_e25": dict(BF16_MUON, learning_rate=1.2e-2, min_lr=1.2e-3, max_iters=400, eval_interval=25),
    "bf16_muon_lr12_h300_e25": dict(BF16_MUON, learning_rate=1.2e-2, min_lr=1.2e-3, max_iters=300, eval_interval=25),
    "bf16_muon_lr20_h300_e25": dict(BF16_MUON, learning_rate=2e-2, min_lr=2e-3, max_iters=300, eval_interval=25),
    "bf16_muon_lr12_h250_e25": dict(BF16_MUON, learning_rate=1.2e-2, min_lr=1.2e-3, max_iters=250, eval_interval=25),
    # Muon alone, float32 throughout (for a CPU without native bfloat16 matmuls)
    "muon_lr12_h300_e25": dict(optimizer="muon", learning_rate=1.2e-2, min_lr=1.2e-3, max_iters=300, eval_interval=25),
}


def recipe_of(name: str) -> Recipe:
    return dataclasses.replace(START, **CANDIDATES[name])


def record(row: dict) -> None:
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def measure_steps(names: list[str], dataset: Dataset) -> None:
    for name in names:
        t0 = time.perf_counter()
        run = train_to_target("sdpa", dataset, recipe_of(name))
        row = dict(
            kind="steps",
            name=name,
            changes=CANDIDATES[name],
            reached=run.reached,
            steps=run.steps,
            val=run.final_val_loss,
            train_seconds=run.train_seconds,
            wall_seconds=time.perf_counter() - t0,
            threads=torch.get_num_threads(),
        )
        print(json.dumps(row), flush=True)
        record(row)


def measure_time(names: list[str], dataset: Dataset, rounds: int, warmup: int = 5) -> None:
    """Median seconds of one training step per candidate, the candidates alternated round-robin."""
    steps = {}
    for name in names:
        recipe = recipe_of(name)
        torch.manual_seed(recipe.seed)
        cfg = recipe.model_config("sdpa")
        cfg.vocab_size = dataset.tokenizer.vocab_size
        model = GPT(cfg)
        tcfg = recipe.train_config()
        train_step = TrainStep(model, make_optimizer(model, tcfg), grad_clip=recipe.grad_clip, autocast=tcfg.autocast())
        gen = torch.Generator().manual_seed(recipe.seed)

        def step(train_step=train_step, recipe=recipe, gen=gen):
            train_step(*get_batch(dataset.train, recipe.batch_size, recipe.block_size, gen)).item()

        steps[name] = step
    times = {name: [] for name in names}
    for i in range(warmup + rounds):
        order = names[i % len(names) :] + names[: i % len(names)]  # each candidate in every position in turn
        for name in order:
            t0 = time.perf_counter()
            steps[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    for name in names:
        row = dict(
            kind="time",
            name=name,
            step_s=statistics.median(times[name]),
            rounds=rounds,
            together=names,
            threads=torch.get_num_threads(),
        )
        print(json.dumps(row), flush=True)
        record(row)


def table() -> str:
    """Markdown: per candidate its changes, steps to target, the median step time of its latest timing session,
    and the estimated training seconds."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    steps = {r["name"]: r for r in rows if r["kind"] == "steps"}  # the latest steps run per candidate
    times = {r["name"]: r for r in rows if r["kind"] == "time"}
    lines = [
        "| candidate | changes to START | reached | steps | step ms (median) | est. train s | run's own train s |",
        "|---|---|---|---|---|---|---|",
    ]

    def est(name):
        s, t = steps.get(name), times.get(name)
        return s["steps"] * t["step_s"] if s and t and s["reached"] else float("inf")

    for name in sorted(steps.keys() | times.keys(), key=lambda n: (est(n), n)):  # ties (no estimate) by name
        s, t = steps.get(name, {}), times.get(name, {})
        changes = ", ".join(f"{k}={v}" for k, v in CANDIDATES.get(name, s.get("changes", {})).items()) or "—"
        step_ms = f"{t['step_s'] * 1e3:.1f}" if t else "—"
        e = est(name)
        lines.append(
            f"| {name} | {changes} | {s.get('reached', '—')} | {s.get('steps', '—')} | {step_ms} | "
            f"{e:.1f} | {s.get('train_seconds', float('nan')):.1f} |"
            if e != float("inf")
            else f"| {name} | {changes} | {s.get('reached', '—')} | {s.get('steps', '—')} | {step_ms} | — | "
            f"{s.get('train_seconds', float('nan')):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["steps", "time", "table"])
    p.add_argument("--only", default=None, help="comma-separated candidate names (default: all)")
    p.add_argument("--rounds", type=int, default=40, help="timed rounds of the alternated step timing")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(CANDIDATES)
    if unknown := [n for n in names if n not in CANDIDATES]:
        raise SystemExit(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    torch.set_num_threads(args.threads)
    if args.what == "table":
        (HERE / "results.md").write_text(table())
        print((HERE / "results.md").read_text())
        return
    dataset = Dataset.load()
    (measure_steps if args.what == "steps" else lambda n, d: measure_time(n, d, args.rounds))(names, dataset)


if __name__ == "__main__":
    main()
