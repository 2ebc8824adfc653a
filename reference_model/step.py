"""One training step of the GPT (forward, backward, gradient clipping, optimizer step), eager or compiled.

train() runs it and the model benchmarks time it, so what is measured is what trains. Compiled, the forward and
backward go through torch.compile as one graph pair and the clip + optimizer update as another (one fused
kernel instead of a dozen per-tensor ops per parameter). The model itself is never wrapped: its state_dict,
evaluation and generation stay those of the plain module, and switching its backend recompiles the step.
Data-parallel (distributed.py), the step's forward runs through DDP, which averages the gradients over the
ranks during backward, before the clip and the update see them.

step = TrainStep(model, optimizer, grad_clip=1.0, compile=True); loss = step(x, y)
"""

from __future__ import annotations

import contextlib

import torch

from .distributed import DataParallel
from .model import GPT


class TrainStep:
    """Callable (x, y) -> loss tensor: one optimizer step on the batch x, y (B, T) token ids."""

    def __init__(
        self,
        model: GPT,
        optimizer,
        *,
        grad_clip: float = 1.0,
        compile: bool = False,
        autocast=None,
        data_parallel: DataParallel | None = None,
    ):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.autocast = autocast or contextlib.nullcontext()  # the forward's (e.g. bf16); backward runs outside
        self.params = [p for p in model.parameters() if p.requires_grad]
        module = data_parallel.wrap(model) if data_parallel else model  # DDP: gradients averaged in backward
        self.forward = torch.compile(module) if compile else module  # shares the parameters, never the state_dict
        self.update = torch.compile(self._update) if compile else self._update
        self.grad_norm: torch.Tensor | None = None  # the last step's gradient norm before clipping (None: no clip)

    def _update(self) -> torch.Tensor | None:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip) if self.grad_clip else None
        self.optimizer.step()
        return norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            _, loss, _ = self.forward(x, y)
        loss.backward()
        self.grad_norm = self.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss
