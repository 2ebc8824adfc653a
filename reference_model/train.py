"""Training loop: AdamW, warmup + cosine schedule, gradient clipping, evaluation and watch mode (checkpoints,
resume and stop signals live in checkpoint.py).

result = train(TrainConfig(max_iters=2000), GPTConfig(backend="sdpa"), Dataset.load())

Inside a torch.distributed process group (torchrun: see distributed.py) it trains data-parallel.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .atomic import remove_stale_temporaries
from .checkpoint import (
    CheckpointError,
    Interrupted,
    RunRNG,
    check_same_vocabulary,
    last_checkpoint_path,
    load_checkpoint,
    restore_state,
    resumable_state,
    save_checkpoint,
    stop_signals,
)
from .data import CharTokenizer, Dataset, all_windows, get_batch
from .model import GPT, GPTConfig
from .optim import ADAMW_IMPLS, make_optimizer
from .step import TrainStep


@dataclass
class TrainConfig:
    max_iters: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per step (data-parallel: the global batch, split evenly over the ranks)
    learning_rate: float = 1e-3  # peak lr, reached after warmup
    min_lr: float = 1e-4  # cosine decays to this at max_iters
    warmup_iters: int = 100  # linear warmup from 0
    weight_decay: float = 0.1  # AdamW decay on matrices only (not biases, norms, embeddings)
    beta1: float = 0.9  # AdamW momentum (first-moment decay)
    beta2: float = 0.99  # nanoGPT's choice for small char models
    optimizer: str = "adamw"  # adamw, or muon: Muon on the blocks' matrices, AdamW on the rest (optim.py)
    adamw_impl: str = "fused"  # AdamW kernel: fused (one kernel per tensor; the fastest step measured), foreach or loop
    grad_clip: float = 1.0  # clip the global grad norm to this; 0 disables
    compile: bool = False  # torch.compile the training step (step.py); the first steps pay the compile time
    eval_interval: int = 250  # evaluate every this many steps (and at the end); 0: only at the end
    eval_iters: int = 50  # random batches per estimate; 0 evaluates the *whole* split (precise, slower)
    seed: int = 1337  # model init, batch sampling, dropout and watch sampling all derive from it
    device: str = "cpu"  # torch device to train on (cpu, cuda, cuda:1, ...)
    dtype: str = "float32"  # float32 or float64 parameters, or bfloat16 (fp32 weights, bf16 autocast)
    threads: int = 0  # torch.set_num_threads for CPU training; 0 leaves PyTorch's default
    out: str | None = None  # best-val checkpoint path (atomic); Ctrl-C also saves <stem>.last<suffix> here
    watch: int = 0  # every N steps, sample one more character and print the growing text; 0: off
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        """Every field is checked here, once: a bad value fails before any training, never as NaN or a no-op."""
        lowest = dict(
            max_iters=1, batch_size=1, warmup_iters=0, eval_interval=0, eval_iters=0, seed=0, threads=0, watch=0
        )
        for name, low in lowest.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate == 0 or self.min_lr > self.learning_rate:
            raise ValueError(f"need 0 <= min_lr <= learning_rate > 0, got {self.min_lr!r} and {self.learning_rate!r}")
        for name in ("beta1", "beta2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.adamw_impl not in ADAMW_IMPLS:
            raise ValueError(f"adamw_impl must be one of {', '.join(ADAMW_IMPLS)}, got {self.adamw_impl!r}")
        if self.dtype not in ("float32", "float64", "bfloat16"):
            raise ValueError(f"dtype must be float32, float64 or bfloat16, got {self.dtype!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be a torch device such as cpu, cuda or cuda:1, got {self.device!r}"
            ) from None
        if self.out is not None and (not isinstance(self.out, str) or not self.out):
            raise ValueError(f"out must be a file path or None, got {self.out!r}")
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False, got {self.progress!r}")

    def autocast(self) -> torch.autocast:
        """The forward's autocast: bf16 when dtype is bfloat16 (float32 weights and optimizer), off otherwise."""
        device_type = torch.device(self.device).type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")


@dataclass
class TrainResult:
    model: GPT
    tokenizer: CharTokenizer
    history: list[dict] = field(default_factory=list)  # one row per evaluation: step, train/val loss, ppl
    step_times: list[float] = field(default_factory=list)  # seconds per optimizer step (no evaluation)
    best_val: float = math.inf
    eval_seconds: float = 0.0
    steps_done: int = 0  # optimizer steps taken so far, counting those before a resume


class TrainingDiverged(RuntimeError):
    """A training value went non-finite: training stops there instead of going on with NaN weights."""

    def __init__(self, step: int, what: str, value: float, last_finite: tuple[int, float] | None):
        last = (
            f"last finite loss {last_finite[1]:.4f} at step {last_finite[0]}" if last_finite else "no finite step yet"
        )
        super().__init__(
            f"training diverged at step {step}: the {what} is {value} ({last}); "
            "lower --learning-rate or set --grad-clip"
        )
        self.step = step


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at max_iters."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, cfg: TrainConfig, generator: torch.Generator | None = None) -> float:
    """Mean cross-entropy on `data`: eval_iters random batches, or every window of it when eval_iters == 0."""
    was_training = model.training
    model.eval()
    T = model.config.block_size
    if cfg.eval_iters == 0:
        x, y = all_windows(data, T)  # (N, T)
        total, count = 0.0, 0
        for i in range(0, len(x), 256):
            xb, yb = x[i : i + 256].to(cfg.device), y[i : i + 256].to(cfg.device)
            _, loss, _ = model(xb, yb)
            total += loss.item() * xb.numel()
            count += xb.numel()
        mean = total / count
    else:
        losses = [
            model(*(t.to(cfg.device) for t in get_batch(data, cfg.batch_size, T, generator)))[1].item()
            for _ in range(cfg.eval_iters)
        ]
        mean = sum(losses) / len(losses)
    model.train(was_training)
    return mean


RESUMABLE = ("train_config", "optimizer", "step", "history", "best_val", "batch_rng", "eval_rng", "torch_rng")


def check_resumable(ckpt: dict, path: str | os.PathLike) -> None:
    """A checkpoint a run can continue: the fields of resumable_state and the train config, none unknown."""
    if missing := [k for k in RESUMABLE if k not in ckpt]:
        raise CheckpointError(f"{path} cannot be resumed: it lacks {', '.join(missing)}")
    try:
        TrainConfig(**ckpt["train_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be resumed: its train_config does not fit this version ({e})") from None


def train(
    cfg: TrainConfig,
    model_cfg: GPTConfig,
    dataset: Dataset,
    *,
    resume: str | os.PathLike | None = None,
    on_eval: Callable[[dict, GPT], bool | None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a GPT on `dataset`. `on_eval(row, model)` sees each evaluation row and the live model; returning
    True stops training.

    With `resume`, model, optimizer, every RNG, the watch text and the step come from that checkpoint (the
    best-val one or the `.last` one left by Ctrl-C) and the run continues exactly where it stopped: same
    batches, same dropout masks, same final weights as an uninterrupted run with the same configs.
    model_cfg's backend still applies (a run may resume under another backend).

    With cfg.out, a first SIGINT (Ctrl-C) or SIGTERM finishes the current step, saves
    `last_checkpoint_path(cfg.out)` and raises `Interrupted` (a KeyboardInterrupt carrying the signal and the
    saved path); a second one interrupts at once.

    Inside a process group of several ranks (distributed.py) every rank draws the same global batch and trains
    its slice of it under DDP; only rank 0 logs, shows progress and watch text, and writes checkpoints. Stop
    signals are not deferred there (one rank saving alone would leave the others waiting): a stop ends the run,
    which resumes from its best-val checkpoint.
    """
    check_splits(dataset, model_cfg)
    run = _Training(cfg, model_cfg, dataset, on_eval, log)
    if resume is not None:
        run.resume_from(resume)
    run.loop(resume)
    return run.result


def check_splits(dataset: Dataset, model_cfg: GPTConfig) -> None:
    """Both splits hold a block: found here, not at the first evaluation after all the training."""
    model_cfg.vocab_size = dataset.tokenizer.vocab_size
    for name, split in (("train", dataset.train), ("validation", dataset.val)):
        if len(split) <= model_cfg.block_size:
            raise ValueError(
                f"the {name} split has {len(split)} tokens: too short for block_size {model_cfg.block_size}"
            )


class _Training:
    """One training run's state (model, optimizer, every RNG, the watch text, the result) and its steps."""

    def __init__(self, cfg: TrainConfig, model_cfg: GPTConfig, dataset: Dataset, on_eval, log):
        self.dp = distributed.current()  # None: one process
        if self.dp and cfg.batch_size % self.dp.world_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} must be divisible by the {self.dp.world_size} data-parallel ranks"
            )
        self.is_main = self.dp is None or self.dp.is_main  # only rank 0 logs, shows progress and writes checkpoints
        self.cfg, self.model_cfg, self.dataset, self.on_eval = cfg, model_cfg, dataset, on_eval
        self.log = log if self.is_main else lambda s: None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = GPT(model_cfg).to(cfg.device)
        if getattr(torch, cfg.dtype) == torch.float64:
            self.model = self.model.double()
        self.optimizer = make_optimizer(self.model, cfg)
        self.rng = RunRNG.seeded(cfg.seed, cfg.device)
        self.watch_text = torch.zeros((1, 1), dtype=torch.long, device=cfg.device)  # (1, chars so far), id 0 first
        self.result = TrainResult(self.model, dataset.tokenizer)
        self.start, self.evaluated_at = 0, None
        self.autocast = cfg.autocast()

    def resume_from(self, resume: str | os.PathLike) -> None:
        _, _, ckpt = load_checkpoint(resume, device=self.cfg.device)
        check_resumable(ckpt, resume)
        check_same_vocabulary(ckpt, self.dataset.tokenizer, resume)
        if self.cfg.max_iters <= ckpt["step"]:  # nothing to train: never reach the clean-up of the resumed checkpoint
            raise CheckpointError(f"max_iters {self.cfg.max_iters} is not past step {ckpt['step']} of {resume}")
        restored_text = restore_state(ckpt, self.model, self.optimizer, self.rng, self.cfg.device)
        self.watch_text = self.watch_text if restored_text is None else restored_text
        self.start = ckpt["step"]
        self.evaluated_at = self.start if ckpt.get("evaluated", True) else None  # the eval at `start` already ran
        self.result.history = ckpt["history"]
        self.result.best_val = ckpt["best_val"]
        self.log(f"resumed from {resume} at step {self.start} (best val {self.result.best_val:.4f})")

    def save(self, path, step: int, evaluated: bool) -> None:
        save_checkpoint(
            path,
            **resumable_state(self.model, self.optimizer, self.rng, self.watch_text),
            model_config=asdict(self.model.config),
            train_config=asdict(self.cfg),
            tokenizer=self.dataset.tokenizer.state_dict(),
            step=step,  # the next step to train
            evaluated=evaluated,  # whether the evaluation due at `step` already ran
            history=self.result.history,
            best_val=self.result.best_val,
        )

    def run_eval(self, step: int) -> bool:
        """Evaluate, log, keep the best-val checkpoint; True when on_eval asks to stop."""
        cfg, result = self.cfg, self.result
        t0 = time.perf_counter()
        with self.autocast:
            train_loss = evaluate(self.model, self.dataset.train, cfg, self.rng.eval)
            val_loss = evaluate(self.model, self.dataset.val, cfg, self.rng.eval)
        result.eval_seconds += time.perf_counter() - t0
        row = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_ppl": math.exp(train_loss),
            "val_ppl": math.exp(val_loss),
            "lr": lr_at(min(step, cfg.max_iters - 1), cfg),
            "train_seconds": sum(result.step_times),
        }
        result.history.append(row)
        if val_loss < result.best_val:
            result.best_val = val_loss
            if cfg.out and self.is_main:
                self.save(cfg.out, step, evaluated=True)
        self.log(
            f"step {step:5d} | train {train_loss:.4f} (ppl {row['train_ppl']:.2f}) | "
            f"val {val_loss:.4f} (ppl {row['val_ppl']:.2f}) | lr {row['lr']:.2e}"
        )
        return bool(self.on_eval and self.on_eval(row, self.model))

    def one_step(self, train_step: TrainStep, step: int, last_finite: tuple[int, float] | None) -> float:
        """One optimizer step at its learning rate on this rank's part of the global batch; its loss (finite)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = (
            t.to(cfg.device)
            for t in get_batch(self.dataset.train, cfg.batch_size, self.model_cfg.block_size, self.rng.batch)
        )
        if self.dp:
            x, y = self.dp.shard(x), self.dp.shard(y)  # (batch_size / world_size, T): this rank's part of the batch
        loss = train_step(x, y)
        if not math.isfinite(loss_value := loss.item()):  # one sync per step: a NaN stops training where it starts
            raise TrainingDiverged(step, "loss", loss_value, last_finite)
        if train_step.grad_norm is not None and not math.isfinite(norm := train_step.grad_norm.item()):
            raise TrainingDiverged(step, "gradient norm", norm, (step, loss_value))
        if torch.device(cfg.device).type == "cuda":
            torch.cuda.synchronize()
        self.result.step_times.append(time.perf_counter() - t0)
        self.result.steps_done = step + 1
        return loss_value

    def watch(self, bar: tqdm, step: int, loss_value: float) -> None:
        """Sample one more character of the watch text and show its tail."""
        self.model.eval()
        context = self.watch_text[:, -self.model_cfg.block_size :]
        sampled = self.model.generate(context, 1, generator=self.rng.watch)  # (1, ctx + 1)
        self.model.train()
        self.watch_text = torch.cat([self.watch_text, sampled[:, -1:]], dim=1)  # (1, chars so far): the growing text
        line = self.dataset.tokenizer.decode(self.watch_text[0, -72:].tolist()).replace("\n", "⏎")
        bar.write(f"step {step + 1:5d} | loss {loss_value:.3f} | {line}")

    def loop(self, resume: str | os.PathLike | None) -> None:
        """Steps from `start` to max_iters with their evaluations; a stop signal saves the `.last` checkpoint."""
        cfg, is_main = self.cfg, self.is_main
        if cfg.out and is_main:
            for path in (cfg.out, last_checkpoint_path(cfg.out)):
                for stale in remove_stale_temporaries(path):
                    self.log(f"removed {stale}: a temporary file left by a killed writer (process gone)")
        train_step = TrainStep(
            self.model,
            self.optimizer,
            grad_clip=cfg.grad_clip,
            compile=cfg.compile,
            autocast=self.autocast,
            data_parallel=self.dp,
        )
        self.model.train()
        show = cfg.progress and is_main
        bar = tqdm(
            range(self.start, cfg.max_iters), initial=self.start, total=cfg.max_iters, disable=not show, desc="train"
        )
        self.result.steps_done = self.start
        last_finite: tuple[int, float] | None = None  # (step, training loss) of the last finite step
        with stop_signals(enabled=bool(cfg.out) and self.dp is None) as stop, contextlib.closing(bar):
            for step in bar:
                if stop.signum is not None:  # SIGINT / SIGTERM: keep everything needed to continue this very run
                    path = last_checkpoint_path(cfg.out)
                    self.save(path, step, evaluated=False)
                    bar.write(f"interrupted at step {step}: saved {path} (continue with --resume {path})")
                    raise Interrupted(stop.signum, path)
                if cfg.eval_interval and step % cfg.eval_interval == 0 and step > 0 and step != self.evaluated_at:
                    if self.run_eval(step):
                        break
                loss_value = self.one_step(train_step, step, last_finite)
                last_finite = (step, loss_value)
                if cfg.watch and is_main and (step + 1) % cfg.watch == 0:
                    self.watch(bar, step, loss_value)
                if show and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_value:.3f}")
            else:
                if self.evaluated_at != cfg.max_iters:
                    self.run_eval(cfg.max_iters)
                own_last = last_checkpoint_path(cfg.out) if cfg.out and is_main else None  # rank 0 owns the files
                if resume is not None and own_last and Path(resume).resolve() == own_last.resolve():
                    Path(resume).unlink()  # the interrupted state this run continued: superseded, it has finished
                    self.log(f"removed {resume}: this run resumed from it and ran to max_iters")
