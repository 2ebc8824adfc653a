"""What the adapters of other projects' kernels share: a package check that imports nothing, and the crossing.

An adapter imports its foreign package lazily (inside its calls), so `import attnbench` never imports jax,
onnxruntime, flash_attn or xformers; registration only asks whether the package is installed.

Crossing cost: each CPU adapter also registers in CROSSINGS its `crossing_fn(q, k, v)`, the same call with the
attention replaced by an identity (the tensors cross into the other framework and the result crosses back), so
the interleaved benchmark times what the framework boundary costs apart from the kernel.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

# backend name -> its crossing alone: fn(q, k, v) -> q, through the foreign framework and back
CROSSINGS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def missing_package_reason(module: str, install: str) -> str | None:
    """None when `module` is importable, else the sentence saying how to install it (nothing is imported)."""
    if importlib.util.find_spec(module) is None:
        return f"the {module} package is not installed ({install})"
    return None


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself when it is contiguous (the zero-copy crossing), else a contiguous copy made in torch."""
    return t.detach() if t.is_contiguous() else t.detach().contiguous()


def bthd(t: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> a (B, T, H, D) view, made contiguous only where the last stride is not 1 (CUDA kernels)."""
    t = t.transpose(1, 2)
    return t if t.stride(-1) == 1 else t.contiguous()
