"""attnbench attention backends: a registry of interchangeable implementations of one contract.

    from attnbench import attend, get_backend, backend_names, use_backend
    out = attend(q, k, v, backend="manual")          # by name
    with use_backend("sdpa_flash"):                  # or by context manager
        out = attend(q, k, v)

Note: PyPI has an unrelated package also called `kernels`; run from the repository root or an editable
install so that this one is imported.
"""

from . import (  # noqa: F401  (importing a backend module registers it)
    chunked,
    compiled_manual,
    flash_attn_cuda,
    flex,
    jax_dpa,
    manual,
    onnx_attention,
    onnx_mha,
    per_head_loop,
    sdpa,
    triton_flash,
    xformers_mea,
)
from .registry import (
    BASE_FEATURES,
    DEFAULT_BACKEND,
    ENTRY_POINT_GROUP,
    FEATURES,
    AttendFn,
    AttentionInputError,
    Backend,
    BackendOutputError,
    NanDeparture,
    UnknownBackendError,
    all_backends,
    attend,
    backend_names,
    bottom_right_causal_mask,
    check_inputs,
    default_scale,
    features_in_use,
    get_backend,
    register_backend,
    use_backend,
    visible_mask,
)

__all__ = [
    "DEFAULT_BACKEND",
    "ENTRY_POINT_GROUP",
    "BASE_FEATURES",
    "FEATURES",
    "AttendFn",
    "AttentionInputError",
    "Backend",
    "BackendOutputError",
    "NanDeparture",
    "UnknownBackendError",
    "all_backends",
    "attend",
    "backend_names",
    "bottom_right_causal_mask",
    "check_inputs",
    "default_scale",
    "features_in_use",
    "get_backend",
    "register_backend",
    "use_backend",
    "visible_mask",
]
