"""Model level: tokens/s of one GPT training step (forward, backward, AdamW) and of generation (with and without
the KV cache), per backend, on the spine's CPU config: 4 layers, 4 heads, width 128, block 64, batch 12; and,
given nanoGPT's model.py (--nanogpt PATH), its training step against this GPT's, alternated in one process, in
float32 and under a bf16 autocast (both models alike), this GPT's step eager and compiled (first_step_s holds
the compile time).

Data are random token ids (throughput does not depend on the text). On a dtype other than float32 the model
keeps float32 parameters and runs under autocast to that dtype, as attnbench.gpt.train does for bf16.
"""

import contextlib
import dataclasses
import os

import pytest
import torch
from attnbench import get_backend
from attnbench.bench.measuring.measure import plan_rounds, synced, time_call, unavailable_reason
from attnbench.bench.measuring.side_by_side import load_nanogpt, side_by_side
from attnbench.gpt.model import GPT, GPTConfig
from attnbench.gpt.step import TrainStep
from attnbench.gpt.train import TrainConfig, make_optimizer

SPINE = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128)
BATCH = 12  # sequences per training step
NEW_TOKENS = SPINE.block_size - 1  # generated after a 1-token prompt: the whole block, no context cropping
BUDGET_S = {"cpu": 1.0, "cuda": 0.5}  # timed seconds per row


def build(c, bench_state, backward: bool):
    """Seeded GPT on the case's device with its backend, and the autocast context for its dtype."""
    dtype = getattr(torch, c.dtype)
    reason = unavailable_reason(get_backend(c.backend), c.device, dtype, backward=backward)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(SPINE, backend=c.backend)).to(c.device)
    if dtype == torch.float32:
        autocast = contextlib.nullcontext()
    else:
        autocast = torch.autocast(device_type=torch.device(c.device).type, dtype=dtype)
    budget = BUDGET_S[torch.device(c.device).type] / (5 if bench_state.settings.plan.quick else 1)
    return model, autocast, budget


def row(c, B, T, tokens, median_s, first_call_s, kind, **extra):
    return {
        "kind": kind,
        "backend": c.backend,
        "device": c.device,
        "dtype": c.dtype,
        "B": B,
        "T": T,
        "threads": torch.get_num_threads(),
        "tokens_per_s": tokens / median_s,
        "median_s": median_s,
        "first_call_s": first_call_s,
        "load_avg_1m": os.getloadavg()[0],
        **extra,
    }


def test_train_step(benchmark, train_step_case, bench_state):
    c = train_step_case
    model, autocast, budget = build(c, bench_state, backward=True)
    tcfg = TrainConfig()
    optimizer = make_optimizer(model, tcfg)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(SPINE.vocab_size, (2, BATCH, SPINE.block_size), generator=g).to(c.device)  # (B, T) each
    model.train()

    train_step = TrainStep(model, optimizer, grad_clip=tcfg.grad_clip, autocast=autocast)  # what train() runs
    step = synced(lambda: train_step(x, y), c.device)
    first_call_s = time_call(step, c.device)
    rounds, iterations = plan_rounds(time_call(step, c.device), budget, min_rounds=5)
    benchmark.pedantic(step, rounds=rounds, iterations=iterations, warmup_rounds=0)
    median_s = benchmark.stats.stats.median
    tokens = BATCH * SPINE.block_size
    benchmark.extra_info.update(row(c, BATCH, SPINE.block_size, tokens, median_s, first_call_s, "train_step"))


def test_generate(benchmark, generate_case, bench_state):
    c = generate_case
    model, autocast, budget = build(c, bench_state, backward=False)
    model.eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=c.device)  # (1, 1)

    def generate():
        with autocast:
            model.generate(prompt, NEW_TOKENS, top_k=10, use_cache=c.use_cache, generator=None)

    generate = synced(generate, c.device)
    first_call_s = time_call(generate, c.device)
    rounds, iterations = plan_rounds(time_call(generate, c.device), budget, min_rounds=3)
    benchmark.pedantic(generate, rounds=rounds, iterations=iterations, warmup_rounds=0)
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        row(c, 1, NEW_TOKENS, NEW_TOKENS, median_s, first_call_s, "generate", use_cache=c.use_cache)
    )


SIDE_BY_SIDE_STEPS = {"full": 300, "quick": 60}  # timed steps of each model, alternated


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nanogpt_side_by_side(benchmark, bench_state, dtype, compile):
    path = bench_state.settings.plan.nanogpt  # --nanogpt PATH, of pytest or of attnbench run
    if not path:
        pytest.skip("no --nanogpt PATH: give nanoGPT's model.py (or its folder) to time its step against this GPT's")
    nanogpt = load_nanogpt(path)
    steps = SIDE_BY_SIDE_STEPS["quick" if bench_state.settings.plan.quick else "full"]
    tcfg = TrainConfig(dtype=dtype, compile=compile)  # both models under this precision; compile: ours only
    r = benchmark.pedantic(side_by_side, args=(nanogpt, steps), kwargs=dict(train_cfg=tcfg), rounds=1)
    benchmark.extra_info.update(
        {
            "kind": "nanogpt_side_by_side",
            "backend": "sdpa",
            "device": "cpu",
            "dtype": r.dtype,
            "B": BATCH,
            "T": SPINE.block_size,
            "threads": r.threads,
            "steps": r.steps,
            "nanogpt_ms": r.nanogpt_ms,
            "attnbench_ms": r.attnbench_ms,
            "ratio": r.ratio,
            "first_step_s": r.first_step_s,
            "compile": r.compile,
            "load_avg_1m": os.getloadavg()[0],
        }
    )
