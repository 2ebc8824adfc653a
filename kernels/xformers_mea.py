"""`xformers_mea`: xFormers' `memory_efficient_attention` (its CUDA kernels: CUTLASS, or flash where it picks it).

The mapping from the contract, written once here (install the `xformers` package on a CUDA machine):

- Layout: xFormers takes (B, M, H, K), i.e. (B, T, H, D): q, k, v are transposed in torch (views, made contiguous
  only where the last stride is not 1) and the (B, Tq, H, D) output is returned as a (B, H, Tq, D) view.
- Causal: xFormers' `LowerTriangularMask` aligns to the top left when Tq != Tk; the adapter passes
  `LowerTriangularFromBottomRightMask`, the contract's bottom-right convention.
- Scale: `scale` (the contract's 1/sqrt(D) by default, xFormers' default too); dropout: `p`.
- xformers is imported on the first call; registration only checks that the package is installed.
"""

from __future__ import annotations

import torch

from .dense import default_scale
from .foreign import bthd, missing_package_reason
from .registry import register_backend

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def xformers_attention(q, k, v, *, causal=True, dropout_p=0.0, scale=None):
    # q: (B, H, Tq, D); k, v: (B, H, Tk, D) -> (B, H, Tq, D)
    from xformers.ops import LowerTriangularFromBottomRightMask, memory_efficient_attention

    bias = LowerTriangularFromBottomRightMask() if causal else None
    out = memory_efficient_attention(
        bthd(q), bthd(k), bthd(v), attn_bias=bias, p=dropout_p, scale=default_scale(q, scale)
    )  # (B, Tq, H, D)
    return out.transpose(1, 2)


def _reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if reason := missing_package_reason("xformers", "pip install xformers, on a CUDA machine"):
        return reason
    if device.type != "cuda":
        return f"the xformers adapter runs xFormers' CUDA kernels, not {device.type}"
    return None if dtype in DTYPES else f"memory_efficient_attention takes fp16/bf16/fp32, not {dtype}"


register_backend(
    "xformers_mea",
    xformers_attention,
    "xFormers memory_efficient_attention (CUDA) with LowerTriangularFromBottomRightMask, layout (B, T, H, D)",
    _reason,
)
