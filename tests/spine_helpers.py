"""Small shared pieces for the spine tests (registry, data, model, training, generation, CLI)."""

from __future__ import annotations

import importlib.util
import random

import attnbench
import pytest
import torch
from attnbench.gpt.data import Dataset
from attnbench.gpt.model import GPT, GPTConfig
from attnbench.gpt.train import TrainConfig

WORDS = ["to", "be", "or", "not", "the", "king", "my", "lord", "ROMEO:", "JULIET:", "thou", "art", ",", ".", "\n"]


def tiny_text(n_words: int = 1500, seed: int = 0) -> str:
    """A generated corpus of a few thousand characters (never the real dataset)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def tiny_dataset() -> Dataset:
    return Dataset.from_text(tiny_text())


def tiny_model_config(backend: str = "sdpa", **kw) -> GPTConfig:
    return GPTConfig(
        **{"block_size": 16, "vocab_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 16, "backend": backend, **kw}
    )


def tiny_train_config(**kw) -> TrainConfig:
    base = dict(max_iters=12, batch_size=4, warmup_iters=3, eval_interval=4, eval_iters=2, progress=False)
    return TrainConfig(**{**base, **kw})


def tiny_model(backend: str = "sdpa", seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_model_config(backend, **kw)).eval()


def cpu_fp32_backends() -> list[str]:
    """Registered backends that can run on CPU in float32 (the ones every CPU model test covers)."""
    return [b.name for b in attnbench.all_backends() if b.supports("cpu", torch.float32)]


def require_cpu_fp32(backend) -> None:
    """Skip (with the backend's own reason) when it cannot run on CPU in float32."""
    reason = backend.why_unsupported("cpu", torch.float32)
    if reason:
        pytest.skip(f"{backend.name}: {reason}")


def require_backward(backend) -> None:
    """Skip (with the backend's own reason) when it is forward-only on CPU (it cannot train)."""
    reason = backend.why_no_backward("cpu")
    if reason:
        pytest.skip(f"{backend.name} is forward-only: {reason}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The spine tests use tiny tensors, where a second thread only adds synchronisation: on a busy 2-core
    machine it made this share >10x slower. Import this fixture into a test module to run it on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
