"""`flex`: torch.nn.attention.flex_attention with a bottom-right causal mask_mod, compiled.

FlexAttention is only fast compiled (eager flex materializes the full score matrix), so the backend always
calls one module-level `torch.compile(flex_attention, dynamic=True)`; the first call per shape family pays
the compile (seconds; benchmarks report it as first_call_s). The causal BlockMask is built once per
(Tq, Tk, device) and cached.

Where it runs (torch 2.13): CUDA with fp16/bf16/fp32. Not on CPU: the CPU build of flex_attention has no
backward ("FlexAttention does not support backward on CPU"), and its compiled forward takes fp32/fp16/bf16
only, so on CPU the backend reports itself unsupported (a forward-only call still works, see `flex_attention_fn`).
FlexAttention has no dropout: dropout_p > 0 raises.

Features, all native: GQA through flex's `enable_gqa=True`; window, document_ids and a user mask_mod become one
mask_mod (AND of them, on absolute positions: flex's own q_idx counts from 0, so it is shifted by Tk - Tq) and one
BlockMask, whose block sparsity makes flex skip fully masked blocks; the call's score transforms (scores.Scores:
softcap, a user score_mod, ALiBi) become one score_mod on absolute positions (q_idx shifted by Tk - Tq, like the
mask). A BlockMask that depends only on (Tq, Tk, causal, window) is cached; one with documents or a mask_mod is
built per call.
On CPU the features are checked on eager flex's forward (tests/test_flex_triton_features.py); the compiled CPU
forward gave a wrong output with a per-head mask_mod and GQA in torch 2.13, and with this module's window mask_mod
and softcap-then-score_mod together (max error 2.9 against eager flex on unit-scale values; either of them beside a
plain lambda compiles right, so the trigger is not isolated); inductor's CPU flex template fails to build an ALiBi
score_mod (CppCompileError). The suite cannot cover these (flex is unsupported on CPU) and a GPU must check.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .call import BASE_FEATURES, AttentionCall
from .dense import default_scale
from .registry import register_backend
from .scores import Scores
from .visibility import Visibility

FLEX_FEATURES = (*BASE_FEATURES, "score_mod", "alibi")  # every score transform is a score_mod

CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _mask_mod(tq: int, tk: int, vis: Visibility):
    """The flex mask_mod (q_idx from 0) of the call's masks, or None when every key is visible."""
    if vis.everything:
        return None
    off = tk - tq

    def visible(b, h, q_idx, kv_idx):
        return vis.sees(b, h, q_idx + off, kv_idx)  # the absolute position of the query

    return visible


@functools.lru_cache(maxsize=64)
def positional_block_mask(tq: int, tk: int, causal: bool, window, device: torch.device):
    """BlockMask for bottom-right causal attention, with a sliding window or not (cached)."""
    from torch.nn.attention.flex_attention import create_block_mask

    mod = _mask_mod(tq, tk, Visibility(causal, window))
    return create_block_mask(mod, B=None, H=None, Q_LEN=tq, KV_LEN=tk, device=device)


def block_mask(q, k, vis: Visibility):
    """The BlockMask of a call that sees `vis`, or None when every key is visible."""
    from torch.nn.attention.flex_attention import create_block_mask

    (b, hq, tq, _), tk = q.shape, k.size(-2)
    if vis.positional:
        return positional_block_mask(tq, tk, vis.causal, vis.window, q.device) if vis.causal else None
    heads = hq if vis.mask_mod is not None else None  # documents are the same for every head
    return create_block_mask(_mask_mod(tq, tk, vis), B=b, H=heads, Q_LEN=tq, KV_LEN=tk, device=q.device)


def call_score_mod(tq: int, tk: int, scores: Scores, device):
    """flex's score_mod (q_idx from 0) of the call's score transforms (softcap, score_mod, ALiBi on absolute
    positions), or None when they are the identity."""
    if scores.identity:
        return None
    if scores.softcap is not None:  # a captured Python float fails to compile under dynamic=True in torch 2.13
        scores = dataclasses.replace(scores, softcap=torch.tensor(scores.softcap, device=device))  # (InductorError)
    off = tk - tq

    def capped(score, b, h, q_idx, kv_idx):  # softcap alone reads no index (with one, see the CPU note above)
        return scores.cap(score)

    def shaped(score, b, h, q_idx, kv_idx):
        return scores(score, b, h, q_idx + off, kv_idx)  # the absolute position of the query

    return shaped if scores.positional else capped


def flex_attention_fn(
    q, k, v, *, causal=True, dropout_p=0.0, scale=None, compiled: bool = True, **features
):  # fmt: skip
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D); features: the contract's FLEX_FEATURES keywords
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError("flex: FlexAttention has no backward on CPU in this PyTorch; run it without grad")
    call = AttentionCall.of({"causal": causal, "scale": scale, **features})
    mask = block_mask(q, k, call.visibility)
    score_mod = call_score_mod(q.size(-2), k.size(-2), call.scores, q.device)
    fn = _compiled_flex() if compiled else flex_attention
    gqa = q.size(1) != k.size(1)
    return fn(q, k, v, score_mod=score_mod, block_mask=mask, scale=default_scale(q, scale), enable_gqa=gqa)


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
    features=FLEX_FEATURES,
)
