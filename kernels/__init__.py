"""attnbench attention backends: a registry of interchangeable implementations of one contract.

    from . import attend, attend_paged, attend_varlen, get_backend, backend_names, use_backend
    out = attend(q, k, v, backend="manual")          # by name
    with use_backend("sdpa_flash"):                  # or by context manager
        out = attend(q, k, v)
    out = attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k)   # a ragged batch (attnbench.layouts)
    out = attend_paged(q, k_cache, v_cache, block_table, cache_seqlens)     # a paged KV cache

This folder installs as the package `attnbench` (pyproject.toml); import it by that name.
"""

from . import (  # noqa: F401  (importing a backend module registers it)
    chunked,
    compiled_manual,
    flash_attn_cuda,
    flashinfer_cuda,
    flex,
    hf_attention,
    jax_dpa,
    manual,
    onnx_attention,
    onnx_mha,
    per_head_loop,
    sdpa,
    triton_flash,
    xformers_mea,
)
from .call import FEATURES, AttentionCall
from .contract import AttendFn, Backend, EmptyRowDeparture, NanDeparture, PrecisionDeparture
from .dense import bottom_right_causal_mask, default_scale, visible_mask
from .errors import AttentionInputError, BackendOutputError, UnknownBackendError
from .layouts import attend_paged, attend_varlen
from .registry import ENTRY_POINT_GROUP, all_backends, attend, backend_names, get_backend, register_backend, use_backend
from .scores import Scores
from .visibility import Visibility

__all__ = [
    "ENTRY_POINT_GROUP",
    "FEATURES",
    "AttendFn",
    "AttentionCall",
    "AttentionInputError",
    "Backend",
    "BackendOutputError",
    "EmptyRowDeparture",
    "NanDeparture",
    "PrecisionDeparture",
    "Scores",
    "UnknownBackendError",
    "Visibility",
    "all_backends",
    "attend",
    "attend_paged",
    "attend_varlen",
    "backend_names",
    "bottom_right_causal_mask",
    "default_scale",
    "get_backend",
    "register_backend",
    "use_backend",
    "visible_mask",
]
