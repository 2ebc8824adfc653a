"""`onnx_mha`: ONNX Runtime's CPU kernel for its `com.microsoft` MultiHeadAttention operator, forward only.

The mapping from the contract to the operator, written once here (install with `pip install 'attnbench[onnxruntime]'`):

- Layout: the operator takes (B, T, H * D); q, k, v are transposed to (B, T, H, D) in torch, a copy unless their
  memory already is (B, T, H, D), as the GPT's q, k, v are (then the views cross as they are). The output is
  written as (B, Tq, H * D) and returned as a (B, H, Tq, D) view.
- Crossing: zero-copy by I/O binding (kernels/ort_session.py); `crossing_fn` times an Identity graph bound alike.
- Causal: with Tq < Tk, ONNX Runtime's `unidirectional=1` on CPU masks the first Tq - 1 query rows to the top
  left (row i sees keys 0 .. i) and lets the last row see every key (measured: Tq=3, Tk=5 gives rows seeing
  1, 2 and 5 keys), neither alignment. For Tq == Tk it is the plain causal mask and is passed; for Tq < Tk
  the adapter passes the contract's bottom-right mask as an additive `attention_bias` (0 / -inf) with
  `unidirectional=0`. `native=True` passes `unidirectional=1` always, which the suite rejects.
- Scale: the `scale` attribute (the contract's 1/sqrt(D) by default).
- dtypes: float32 and float16 (the CPU kernel has no float64 or bfloat16); heads must match (no GQA).
- No backward (an inference runtime) and no dropout.
"""

from __future__ import annotations

import functools

import torch

from .contract import NAN_IN_FUTURE_KEY_OR_VALUE
from .dense import bottom_right_causal_mask, default_scale
from .foreign import CROSSINGS
from .ort_session import ort_missing_reason, run
from .registry import register_backend

DTYPES = (torch.float32, torch.float16)


@functools.lru_cache(maxsize=64)
def _bias(tq: int, tk: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, Tq, Tk) additive bias: 0 where the contract's causal mask lets query i see key j, else -inf."""
    hidden = ~bottom_right_causal_mask(tq, tk, torch.device("cpu"))
    return torch.zeros(1, 1, tq, tk, dtype=dtype).masked_fill(hidden, float("-inf"))


def _bt_hd(t: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D): a view when the memory is (B, T, H, D), else a copy."""
    b, h, t_len, d = t.shape
    return t.detach().transpose(1, 2).reshape(b, t_len, h * d)


def onnx_mha(q, k, v, *, causal=True, dropout_p=0.0, scale=None, native: bool = False):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D) -> (B, H, Tq, D)
    if dropout_p > 0:
        raise NotImplementedError("ONNX Runtime's MultiHeadAttention kernel has no dropout")
    if q.size(1) != k.size(1):
        raise NotImplementedError("MultiHeadAttention needs as many kv heads as query heads")
    (b, h, tq, d), tk = q.shape, k.size(-2)
    explicit_mask = causal and tq < tk and not native
    attrs = {"num_heads": h, "unidirectional": int(causal and not explicit_mask), "scale": default_scale(q, scale)}
    inputs = {"query": _bt_hd(q), "key": _bt_hd(k), "value": _bt_hd(v)}
    if explicit_mask:
        inputs.update(bias=None, key_padding_mask=None, attention_bias=_bias(tq, tk, q.dtype))
    out = run("MultiHeadAttention", "com.microsoft", inputs, attrs, (b, tq, h * d))  # (B, Tq, H * D)
    return out.view(b, tq, h, d).transpose(1, 2)


def crossing_fn(q, k, v) -> torch.Tensor:
    """The crossing alone: q laid out as (B, T, H * D), bound into an Identity graph, the result bound back."""
    b, h, tq, d = q.shape
    return run("Identity", "", {"q": _bt_hd(q)}, {}, (b, tq, h * d)).view(b, tq, h, d).transpose(1, 2)


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := ort_missing_reason():
        return reason
    if device.type != "cpu":
        return f"the ONNX Runtime adapter runs its CPU execution provider, not {device.type}"
    return None if dtype in DTYPES else f"ONNX Runtime's CPU MultiHeadAttention takes fp32/fp16, not {dtype}"


register_backend(
    "onnx_mha",
    onnx_mha,
    "ONNX Runtime CPU, com.microsoft MultiHeadAttention, I/O binding; bottom-right attention_bias for Tq < Tk",
    _reason,
    no_dropout_reason=lambda device: "ONNX Runtime's MultiHeadAttention kernel has no dropout",
    no_backward_reason="ONNX Runtime is an inference runtime: its MultiHeadAttention kernel has no backward",
    nan_departure=NAN_IN_FUTURE_KEY_OR_VALUE.said_of("ONNX Runtime's MultiHeadAttention kernel"),
)
CROSSINGS["onnx_mha"] = crossing_fn
