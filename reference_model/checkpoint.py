"""Checkpoints of a training run: atomic save and load, the resumable state (model, optimizer, every RNG, the
watch text), the `.last` path an interrupted run leaves, and stop signals deferred to a step boundary.

    with stop_signals(enabled=True) as stop:      # SIGINT / SIGTERM only set stop.signum
        for step in ...:
            if stop.signum: save(last_checkpoint_path(out), ...); raise Interrupted(stop.signum, path)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import AtomicFile
from .data import CharTokenizer
from .model import GPT, GPTConfig

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers and `timeout` send


def save_checkpoint(path: str | os.PathLike, **state) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a checkpoint."""
    with AtomicFile(path) as f:
        torch.save(state, f)


class CheckpointError(ValueError):
    """A file that is not a complete checkpoint of this project (empty, truncated, foreign), or one that does
    not fit the run that wants it."""


def load_checkpoint(path: str | os.PathLike, *, backend: str | None = None, device: str = "cpu"):
    """Rebuild (model, tokenizer, checkpoint dict) from a checkpoint, optionally under another backend."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # weights_only: tensors and plain data only; a pickle that would build any other object (and so could run
        # code) is refused, never executed
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # the callable it would import, e.g. posix.system
        what = f" such as {found.group(1)}" if found else ""
        raise CheckpointError(
            f"{path} is not a checkpoint of this project: it holds objects{what} beside tensors and plain data "
            "(refused unread: loading it could run code)"
        ) from None
    except Exception as e:  # empty, truncated or not a torch file: torch raises one of many types
        detail = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        why = f"empty, truncated or another format: {detail}"
        raise CheckpointError(f"{path} is not a readable checkpoint ({why})") from None
    missing = {"model", "model_config", "tokenizer"} - (set(ckpt) if isinstance(ckpt, dict) else set())
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint written by train --out (it lacks {', '.join(sorted(missing))})"
        )
    try:
        config = GPTConfig(**ckpt["model_config"])
        if backend is not None:
            config.backend = backend
        model = GPT(config).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as e:  # a foreign config field, or weights that do not fit the config
        raise CheckpointError(f"{path} holds a model this version cannot rebuild: {str(e).splitlines()[0]}") from e
    chars = ckpt["tokenizer"].get("chars") if isinstance(ckpt["tokenizer"], dict) else None
    if not isinstance(chars, str) or len(set(chars)) != config.vocab_size:
        raise CheckpointError(
            f"{path} holds a malformed tokenizer: not a string of {config.vocab_size} distinct characters, the "
            "model's vocabulary"
        )
    return model, CharTokenizer.from_state_dict(ckpt["tokenizer"]), ckpt


def check_same_vocabulary(ckpt: dict, tokenizer: CharTokenizer, path: str | os.PathLike) -> None:
    """Refuse to continue a checkpoint on data with another vocabulary: every token id would change meaning."""
    theirs, ours = set(ckpt["tokenizer"]["chars"]), set(tokenizer.chars)

    def only(chars: set[str]) -> str:
        return repr("".join(sorted(chars))[:20]) if chars else "none"

    if theirs != ours:
        raise CheckpointError(
            f"{path} was trained on another vocabulary ({len(theirs)} characters) than this data "
            f"({len(ours)}): only in the checkpoint {only(theirs - ours)}, only in the data {only(ours - theirs)}; "
            "resume it on the data it was trained on"
        )


def last_checkpoint_path(out: str | os.PathLike) -> Path:
    """Where an interrupted run leaves its last state: ckpt.pt -> ckpt.last.pt (beside the best-val one)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix}")


@dataclass
class RunRNG:
    """Every random stream of a run, seeded apart so that evaluation and watch sampling never shift training."""

    batch: torch.Generator  # training batch sampling
    eval: torch.Generator  # evaluation batch sampling
    watch: torch.Generator  # watch-mode text sampling (on the training device)

    @classmethod
    def seeded(cls, seed: int, device: str) -> RunRNG:
        return cls(
            torch.Generator().manual_seed(seed),
            torch.Generator().manual_seed(seed + 1),
            torch.Generator(device).manual_seed(seed + 2),
        )


def resumable_state(model: GPT, optimizer: torch.optim.Optimizer, rng: RunRNG, watch_text: torch.Tensor) -> dict:
    """The part of a checkpoint that makes a run continue bit-identically: weights, optimizer, every RNG."""
    device = torch.device(watch_text.device)
    return dict(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        batch_rng=rng.batch.get_state(),
        eval_rng=rng.eval.get_state(),
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        watch_rng=rng.watch.get_state(),
        watch_text=watch_text.cpu(),
    )


def restore_state(
    ckpt: dict, model: GPT, optimizer: torch.optim.Optimizer, rng: RunRNG, device: str
) -> torch.Tensor | None:
    """Load `resumable_state` back into model, optimizer and RNGs; returns the watch text (1, chars so far),
    None for a checkpoint older than watch mode."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng.batch.set_state(ckpt["batch_rng"])
    rng.eval.set_state(ckpt["eval_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    if torch.device(device).type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], torch.device(device))
    if "watch_rng" not in ckpt:
        return None
    rng.watch.set_state(ckpt["watch_rng"])
    return ckpt["watch_text"].to(device)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving its state to `saved` (None: a second signal, nothing saved)."""

    def __init__(self, signum: int, saved: Path | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.saved = signum, saved


@dataclass
class StopRequest:
    signum: int | None = None  # the first stop signal received, None while training may go on


@contextlib.contextmanager
def stop_signals(enabled: bool):
    """While active, a first SIGINT or SIGTERM only records itself in the yielded StopRequest (the loop stops
    cleanly at the next step boundary, after saving); a second one interrupts at once. Signals can only be
    caught in the main thread."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum is not None:
            raise Interrupted(signum, None)
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
