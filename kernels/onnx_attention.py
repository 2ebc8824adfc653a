"""`onnx_attention`: ONNX Runtime's CPU kernel for the standard ONNX `Attention` operator (opset 23), forward only.

The mapping from the contract to the operator, written once here (install with `pip install 'attnbench[onnxruntime]'`):

- Layout: the operator takes 4-D (B, H, T, D) inputs, the contract's layout: nothing is transposed.
- Crossing: zero-copy by I/O binding (kernels/ort_session.py); `crossing_fn` times an Identity graph bound alike.
- Causal: ONNX Runtime's `is_causal` aligns the mask to the top left (query i sees keys 0 .. i) when Tq < Tk.
  For Tq == Tk both agree and `is_causal=1` is passed; for Tq < Tk the adapter passes the contract's bottom-right
  mask as the boolean `attn_mask` (True = attend) instead. `native=True` passes `is_causal=1` always,
  which the conformance suite rejects (tests/test_foreign.py).
- Scale: passed as the `scale` attribute (the contract's 1/sqrt(D) by default, the operator's default too). ONNX
  attributes are float32, and ONNX Runtime computes its default scale in float32 too, so a float64 run would
  be only float32-accurate (8e-8 from the float64 reference where 1e-15 is the bound); for float64 the adapter
  multiplies q by the scale in torch and passes scale=1. `native=True` passes the attribute in every dtype.
- GQA: by the head counts of the 4-D inputs; query head h reads kv head h // (Hq // Hkv).
- dtypes: float32, float16 and float64 (ONNX Runtime's CPU kernel has no bfloat16).
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

DTYPES = (torch.float32, torch.float16, torch.float64)


@functools.lru_cache(maxsize=64)
def _mask(tq: int, tk: int) -> torch.Tensor:
    return bottom_right_causal_mask(tq, tk, torch.device("cpu"))  # (Tq, Tk) bool, broadcast over B and H


def onnx_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None, native: bool = False):
    # q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, Hq, Tq, D)
    if dropout_p > 0:
        raise NotImplementedError("ONNX Runtime's Attention kernel has no dropout")
    tq, tk = q.size(-2), k.size(-2)
    explicit_mask = causal and tq < tk and not native
    scale = default_scale(q, scale)
    if q.dtype == torch.float64 and not native:
        q, scale = q * scale, 1.0  # (B, Hq, Tq, D): the scale applied in float64, not as a float32 attribute
    attrs = {"is_causal": int(causal and not explicit_mask), "scale": scale}
    inputs = {"q": q, "k": k, "v": v, "attn_mask": _mask(tq, tk) if explicit_mask else None}
    return run("Attention", "", inputs, attrs, q.shape)


def crossing_fn(q, k, v) -> torch.Tensor:
    """The crossing alone: q bound into an Identity graph's session and the result bound back."""
    return run("Identity", "", {"q": q}, {}, q.shape)


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := ort_missing_reason():
        return reason
    if device.type != "cpu":
        return f"the ONNX Runtime adapter runs its CPU execution provider, not {device.type}"
    return None if dtype in DTYPES else f"ONNX Runtime's CPU Attention kernel takes fp32/fp16/fp64, not {dtype}"


register_backend(
    "onnx_attention",
    onnx_attention,
    "ONNX Runtime CPU, ONNX Attention (opset 23), zero-copy I/O binding; bottom-right attn_mask for Tq < Tk",
    _reason,
    features={"gqa"},  # nothing else of the contract's features: no window, mask_mod, document_ids or softcap here
    no_dropout_reason=lambda device: "ONNX Runtime's Attention kernel has no dropout",
    no_backward_reason="ONNX Runtime is an inference runtime: its Attention kernel has no backward",
    nan_departure=NAN_IN_FUTURE_KEY_OR_VALUE.said_of("ONNX Runtime's Attention kernel"),
)
CROSSINGS["onnx_attention"] = crossing_fn
