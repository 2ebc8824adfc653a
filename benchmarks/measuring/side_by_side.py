"""nanoGPT's model.py against the reference GPT: one training step each, alternated step by step in one process.

Same config (nanoGPT's CPU recipe: 4 layers, 4 heads, n_embd 128, block 64, batch 12, no bias, no dropout),
same init seed, same batches, same precision. nanoGPT steps as its train.py does (its configure_optimizers'
AdamW, clip 1.0, the forward under the autocast its train.py uses for bfloat16); the reference GPT steps as
attnbench.gpt.train does (TrainStep with the given TrainConfig: under bfloat16 the same autocast, its attention
backend kept in float32 as the training recipe runs it, GPTConfig.attention_fp32). Alternating A/B steps (the
order flipped every step) cancels machine drift; the ratio of the medians is the figure. The nanoGPT file is
never part of this project: its path is given by the user.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from attnbench.gpt.model import GPT, GPTConfig
from attnbench.gpt.step import TrainStep
from attnbench.gpt.train import TrainConfig, make_optimizer

VOCAB, BLOCK, BATCH, LAYERS, HEADS, WIDTH = 65, 64, 12, 4, 4, 128


@dataclass
class SideBySide:
    steps: int  # timed steps of each model (after the warm-up)
    nanogpt_ms: float  # median milliseconds of one nanoGPT training step
    attnbench_ms: float  # median milliseconds of one reference-GPT training step
    first_step_s: float  # the reference GPT's first step (includes torch.compile's compile time when compiled)
    compile: bool
    dtype: str  # float32, or bfloat16: both forwards under the same bf16 autocast
    threads: int

    @property
    def ratio(self) -> float:
        """attnbench / nanoGPT: below 1, the reference GPT trains faster."""
        return self.attnbench_ms / self.nanogpt_ms


def load_nanogpt(path: str | os.PathLike) -> ModuleType:
    """nanoGPT's model.py (the file or the folder holding it) as a module."""
    p = Path(path)
    p = p / "model.py" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no nanoGPT model.py at {p}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "GPT") or not hasattr(module, "GPTConfig"):
        raise ValueError(f"{p} defines no GPT and GPTConfig: not nanoGPT's model.py")
    return module


def side_by_side(
    nanogpt: ModuleType, steps: int = 300, warmup: int = 20, train_cfg: TrainConfig | None = None, seed: int = 1337
) -> SideBySide:
    """Time `steps` training steps of each model, alternated (the order flipped every step)."""
    tcfg = train_cfg or TrainConfig()
    torch.manual_seed(seed)
    ng_cfg = dict(block_size=BLOCK, vocab_size=VOCAB, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, dropout=0.0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(**ng_cfg, bias=False))
    their_opt = theirs.configure_optimizers(tcfg.weight_decay, tcfg.learning_rate, (tcfg.beta1, tcfg.beta2), "cpu")
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(**ng_cfg, bias=False, backend="sdpa", attention_fp32=tcfg.dtype == "bfloat16"))
    our_step = TrainStep(
        ours, make_optimizer(ours, tcfg), grad_clip=tcfg.grad_clip, compile=tcfg.compile, autocast=tcfg.autocast()
    )
    their_autocast = tcfg.autocast()  # the same bf16 autocast (or none) around nanoGPT's forward

    def their_step(x, y):
        with their_autocast:
            _, loss = theirs(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), tcfg.grad_clip)
        their_opt.step()
        their_opt.zero_grad(set_to_none=True)

    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, VOCAB, (200_000,), generator=g)  # random ids: step time does not depend on the text
    offsets = torch.arange(BLOCK)  # (T,)

    def batch():
        ix = torch.randint(len(data) - BLOCK - 1, (BATCH, 1), generator=g)  # (B, 1)
        return data[ix + offsets], data[ix + offsets + 1]  # (B, T) each

    t0 = time.perf_counter()
    our_step(*batch())
    first_step_s = time.perf_counter() - t0
    times = {"theirs": [], "ours": []}
    for i in range(warmup + steps):
        x, y = batch()
        order = [("theirs", their_step), ("ours", our_step)]
        for name, step in order if i % 2 else order[::-1]:
            t0 = time.perf_counter()
            step(x, y)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return SideBySide(
        steps,
        statistics.median(times["theirs"]),
        statistics.median(times["ours"]),
        first_step_s,
        tcfg.compile,
        tcfg.dtype,
        torch.get_num_threads(),
    )
