"""`compiled_manual`: the `manual` backend under torch.compile (inductor fuses mask, softmax and scaling).

One module-level `torch.compile(manual_attention, dynamic=True)`: dynamic shapes so that new sequence lengths
reuse the compiled graph (dynamo still specializes on sizes 0/1, Tq == Tk, dtype, grad mode and the causal /
dropout arguments, so a handful of compiles happen). Each compile costs seconds on CPU (~5 s forward,
~12-20 s forward+backward on a busy 2-core machine); benchmarks report the first call, compile included,
as first_call_s. Below COMPILE_MIN_TK keys compiling costs far more than it can save, so short sequences run
the eager `manual` formula: the correctness suite's hypothesis shapes (T <= 24) therefore do not compile,
and tests/test_kernels_extra.py checks the compiled path itself on a longer sequence.
"""

from __future__ import annotations

import functools

import torch

from .contract import NAN_IN_FUTURE_VALUE, score_matrix_bytes
from .manual import manual_attention
from .registry import register_backend

COMPILE_MIN_TK = 64  # shorter key sequences run eager: a compile (seconds) would never pay back


@functools.cache
def _compiled():
    return torch.compile(manual_attention, dynamic=True)


def compiled_manual_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D) -> (B, H, Tq, D)
    fn = _compiled() if k.size(-2) >= COMPILE_MIN_TK else manual_attention
    return fn(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale)


register_backend(
    "compiled_manual",
    compiled_manual_attention,
    f"the manual formula under torch.compile(dynamic=True); eager below Tk={COMPILE_MIN_TK}",
    working_set=score_matrix_bytes,  # as manual: inductor fuses the elementwise work, the (B, H, Tq, Tk) scores stay
    nan_departure=NAN_IN_FUTURE_VALUE,
)
