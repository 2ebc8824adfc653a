"""`flex`: torch.nn.attention.flex_attention with a bottom-right causal mask_mod, compiled.

FlexAttention is only fast compiled (eager flex materializes the full score matrix), so the backend always
calls one module-level `torch.compile(flex_attention, dynamic=True)`; the first call per shape family pays
the compile (seconds; benchmarks report it as first_call_s). The causal BlockMask is built once per
(Tq, Tk, device) and cached.

Where it runs (torch 2.13): CUDA with fp16/bf16/fp32. Not on CPU: the CPU build of flex_attention has no
backward ("FlexAttention does not support backward on CPU"), and its compiled forward takes fp32/fp16/bf16
only, so on CPU the backend reports itself unsupported (a forward-only call still works, see `flex_attention_fn`).
FlexAttention has no dropout: dropout_p > 0 raises.
"""

from __future__ import annotations

import functools

import torch

from .registry import default_scale, register_backend

CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the compiled CPU forward accepts


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


@functools.lru_cache(maxsize=64)
def causal_block_mask(tq: int, tk: int, device: torch.device):
    """BlockMask for bottom-right causal attention: query i (absolute position Tk - Tq + i) sees keys <= it."""
    from torch.nn.attention.flex_attention import create_block_mask

    off = tk - tq

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + off

    return create_block_mask(causal, B=None, H=None, Q_LEN=tq, KV_LEN=tk, device=device)


def flex_attention_fn(q, k, v, *, causal=True, dropout_p=0.0, scale=None, compiled: bool = True):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D) -> (B, H, Tq, D)
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError("flex: FlexAttention has no backward on CPU in this PyTorch; run it without grad")
    mask = causal_block_mask(q.size(-2), k.size(-2), q.device) if causal else None
    fn = _compiled_flex() if compiled else flex_attention
    return fn(q, k, v, block_mask=mask, scale=default_scale(q, scale))


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type == "cuda":
        return None if dtype in CUDA_DTYPES else f"flex on CUDA takes fp16/bf16/fp32, not {dtype}"
    if device.type == "cpu":
        return (
            "flex on CPU has no backward in torch " + torch.__version__.split("+")[0] + " (its compiled forward, "
            "fp32/fp16/bf16 only, works without grad); needs CUDA for training"
        )
    return f"flex needs CUDA, not {device.type}"


register_backend(
    "flex",
    flex_attention_fn,
    "torch.nn.attention.flex_attention with a bottom-right causal mask_mod, torch.compile'd, cached BlockMask",
    _reason,
    no_dropout_reason=lambda device: "FlexAttention has no dropout",
)
